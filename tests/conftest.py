"""Shared fixtures. The real RSNA studies live in ../shared/data beside the checkout (CI has
them there); a test that needs them fails loudly when they are absent, it never skips."""

from __future__ import annotations

import csv
import secrets
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from data_paths import LABELLED, UNLABELLED_ZIP
from data_paths import require as _require

from core.pacs.dicomweb import PacsSettings
from core.pacs.orthanc_local import LocalOrthanc, OrthancUnavailable


@pytest.fixture(autouse=True)
def _own_data_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Every test gets its own app data folder (review database, pseudonym key): a test never
    writes into the project's data/ and never sees another test's key."""
    monkeypatch.setenv("ICH_REVIEW_DATA", str(tmp_path_factory.mktemp("app-data")))


@pytest.fixture(scope="session", autouse=True)
def _reference_backend() -> Iterator[None]:
    """torch runs the network unless a test asks for another backend: the engine's own tests
    compare with the torch module to 1e-5, and an OpenVINO conversion per test would cost
    seconds. Session-wide, so module-scoped fixtures (set up before any per-test fixture) see
    it too. tests/inference/test_openvino_backend.py and the browser tests use OpenVINO."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICH_BACKEND", "torch")
        yield


@pytest.fixture(scope="session")
def study_zips() -> list[Path]:
    """The 16 labelled study zips."""
    zips = sorted(_require(LABELLED / "studies").glob("*.zip"))
    if len(zips) != 16:
        pytest.fail(f"expected 16 labelled study zips in {LABELLED / 'studies'}, found {len(zips)}")
    return zips


@pytest.fixture(scope="session")
def unlabelled_zip() -> Path:
    return _require(UNLABELLED_ZIP)


@pytest.fixture(scope="session")
def label_rows() -> dict[str, list[dict[str, str]]]:
    """rsna_dev_labels.csv rows grouped by StudyInstanceUID, in slice_index order."""
    rows: dict[str, list[dict[str, str]]] = defaultdict(list)
    with _require(LABELLED / "rsna_dev_labels.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            rows[row["StudyInstanceUID"]].append(row)
    for items in rows.values():
        items.sort(key=lambda r: int(r["slice_index"]))
    return dict(rows)


@pytest.fixture(scope="session")
def small_zip(study_zips: list[Path]) -> Path:
    """A real labelled study with few slices, for tests that need just one."""
    return min(study_zips, key=lambda p: p.stat().st_size)


@pytest.fixture(scope="session")
def tiny_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The card of an untrained tiny network *with* the bleed-map head (test fixture only):
    for the OpenVINO and int8 tests, which need both outputs."""
    import torch

    from core.model.checkpoint import ModelSpec, build_model, save_checkpoint

    torch.manual_seed(3)
    net = build_model(ModelSpec("tiny", 64, bleed_map=True))
    net.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the slices differ
        net(torch.rand(8, 3, 64, 64))
    spec = ModelSpec("tiny", 64, bleed_map=True)
    return save_checkpoint(net.eval(), spec, tmp_path_factory.mktemp("weights"), "tiny-map")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with an untrained tiny checkpoint: it exercises the app's model path and says
    nothing about hemorrhage (test fixture only, never shipped)."""
    import torch

    from core.model.checkpoint import ModelSpec, build_model, save_checkpoint

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    spec = ModelSpec("tiny", 64)
    model = build_model(spec)
    model.train()
    with torch.no_grad():  # one pass in train mode gives BatchNorm non-trivial statistics
        model(torch.rand(4, 3, 64, 64))
    save_checkpoint(model.eval(), spec, folder, "tiny-test", {"training_data": "none (test)"})
    return folder


# The real Orthanc (Debian's orthanc + orthanc-dicomweb) the PACS tests talk to: one per test
# session, started on first use, on a free loopback port, with a basic-auth user.


@pytest.fixture(scope="session")
def orthanc() -> Iterator[LocalOrthanc]:
    server = LocalOrthanc(username="ich-test", password=secrets.token_hex(8))
    try:
        server.start()
    except OrthancUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def pacs(orthanc: LocalOrthanc) -> LocalOrthanc:
    """The session's Orthanc, empty."""
    orthanc.delete_all()
    return orthanc


@pytest.fixture
def settings(pacs: LocalOrthanc) -> PacsSettings:
    return PacsSettings(
        pacs.dicomweb_url, username=pacs.username or "", password=pacs.password or ""
    )


@pytest.fixture(scope="session")
def few_zips(study_zips: list[Path]) -> list[Path]:
    """The three smallest real studies: enough to show 'each once', quick on two cores."""
    return sorted(study_zips, key=lambda p: p.stat().st_size)[:3]
