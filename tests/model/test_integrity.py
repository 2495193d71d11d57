"""core.model.integrity and the card checks: each tampered model of issue 15 is refused with a
clear message or loaded only with the flag as "unverified model"; the shipped models verify.

The tampering is done on copies of the tiny test model (tests/conftest.py), made "shipped" for
the test by putting its digest on the manifest; the shipped weights are never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.errors import ModelError, UnverifiedModelError
from core.inference.predictor import Predictor, ResultCache
from core.model import integrity
from core.model.checkpoint import combined_sha256, find_default_checkpoint, load_checkpoint
from core.model.integrity import ShippedModel, content_digest, stamp
from core.predict import EXIT_MODEL, main

ROOT = Path(__file__).resolve().parents[2]
#: Every card in weights/ (the newest first): each must be on the manifest.
SHIPPED_CARDS = sorted((ROOT / "weights").glob("*.json"), reverse=True)


@pytest.fixture
def shipped_tiny(tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the tiny model whose card is on the manifest (for this test only)."""
    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights, folder)
    card = json.loads((folder / "tiny-test.json").read_text(encoding="utf-8"))
    entry = ShippedModel("tiny-test", content_digest(card), card["weights_sha256"])
    monkeypatch.setattr(integrity, "SHIPPED", (entry,))
    return folder / "tiny-test.json"


def _edit(card_path: Path, change: Any) -> None:
    card = json.loads(card_path.read_text(encoding="utf-8"))
    change(card)
    card_path.write_text(json.dumps(card, indent=2), encoding="utf-8")


def _no_traceback_from_the_cli(card: Path, small_zip: Path, capsys: Any) -> str:
    """predict on the tampered card: exit 3 and one readable line, never a traceback."""
    assert main([str(small_zip), "--weights", str(card), "--no-volume"]) == EXIT_MODEL
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_the_shipped_models_verify() -> None:
    assert SHIPPED_CARDS[0].name == "ich-resnext101-32x4d-v4.json"
    for card in SHIPPED_CARDS:
        loaded = load_checkpoint(card, with_context=False)  # no flag: it must be on the manifest
        assert loaded.trust.verified and loaded.trust.label == "verified", card.name
        assert loaded.card.content_sha256 == loaded.trust.digest
    assert find_default_checkpoint() == SHIPPED_CARDS[0]


def test_the_untouched_copy_verifies_and_stamps_are_stable(shipped_tiny: Path) -> None:
    assert load_checkpoint(shipped_tiny).trust.verified
    card = json.loads(shipped_tiny.read_text(encoding="utf-8"))
    assert stamp(card) == card  # save_checkpoint wrote the digest it computes
    reordered = dict(reversed(list(card.items())))
    assert content_digest(reordered) == card["content_sha256"]  # key order is not content


@pytest.mark.parametrize(
    "case, change",
    [
        ("windows", lambda c: c["windows"][0].update(level=60, width=120)),
        ("summary", lambda c: c.update(summary="Cleared for clinical use.")),
        ("thresholds", lambda c: c.update(operating_thresholds={"study_any": 0.9})),
        ("notice", lambda c: c.update(notice="Approved medical device.")),
        ("unknown key", lambda c: c.update(note="validated by the FDA")),
    ],
)
def test_an_edited_card_is_unverified(
    shipped_tiny: Path, small_zip: Path, case: str, change: Any, capsys: Any
) -> None:
    _edit(shipped_tiny, change)
    with pytest.raises(UnverifiedModelError, match="edited after it was written") as err:
        load_checkpoint(shipped_tiny)
    assert "--allow-unverified" in str(err.value), case
    _no_traceback_from_the_cli(shipped_tiny, small_zip, capsys)
    loaded = load_checkpoint(shipped_tiny, allow_unverified=True)
    assert not loaded.trust.verified and loaded.trust.label == "unverified model"


def test_an_edited_window_changes_the_numbers_and_is_labelled(
    shipped_tiny: Path, small_zip: Path
) -> None:
    from core.dicom.study import load_studies

    study = load_studies(small_zip)[0]
    before = Predictor(load_checkpoint(shipped_tiny), "cpu", cache=ResultCache()).predict(study)
    _edit(shipped_tiny, lambda c: c["windows"][0].update(level=60, width=120))
    edited = Predictor(load_checkpoint(shipped_tiny, allow_unverified=True), "cpu", cache=None)
    after = edited.predict(study)
    assert before.model_status == "verified" and after.model_status == "unverified model"
    assert after.study_scores["any"] != before.study_scores["any"]
    assert after.to_dict()["model_status"] == "unverified model"


def test_a_weight_edit_with_its_sha256_updated_is_unverified(shipped_tiny: Path) -> None:
    shard = shipped_tiny.with_suffix(".safetensors")
    tensors = load_file(str(shard))
    tensors["fc.bias"] = tensors["fc.bias"] + 3.0
    save_file(tensors, str(shard), metadata={"format": "pt"})
    sha = hashlib.sha256(shard.read_bytes()).hexdigest()

    def update(card: dict[str, Any]) -> None:
        card["weights_files"][0].update(sha256=sha, bytes=shard.stat().st_size)
        card["weights_sha256"] = combined_sha256([sha])

    _edit(shipped_tiny, update)
    with pytest.raises(UnverifiedModelError, match="edited after it was written"):
        load_checkpoint(shipped_tiny)
    # The attacker also recomputes the digest: the manifest still does not know it.
    _edit(shipped_tiny, lambda c: c.update(stamp(c)))
    with pytest.raises(
        UnverifiedModelError, match="name of the shipped model tiny-test but has different weights"
    ):
        load_checkpoint(shipped_tiny)
    loaded = load_checkpoint(shipped_tiny, allow_unverified=True)
    assert not loaded.trust.verified
    torch.testing.assert_close(loaded.model.state_dict()["fc.bias"], tensors["fc.bias"])


def test_a_weight_edit_without_its_sha256_is_refused_even_with_the_flag(
    shipped_tiny: Path,
) -> None:
    shard = shipped_tiny.with_suffix(".safetensors")
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="changed or damaged") as err:
        load_checkpoint(shipped_tiny, allow_unverified=True)
    assert not isinstance(err.value, UnverifiedModelError)


def test_a_dropped_in_newer_card_is_unverified(
    shipped_tiny: Path, small_zip: Path, capsys: Any
) -> None:
    folder = shipped_tiny.parent
    card = json.loads(shipped_tiny.read_text(encoding="utf-8"))
    card.update(name="tiny-newer", created="2099-01-01T00:00:00+00:00")
    (folder / "tiny-newer.json").write_text(json.dumps(stamp(card), indent=2), encoding="utf-8")
    assert find_default_checkpoint(folder) == folder / "tiny-newer.json"
    with pytest.raises(UnverifiedModelError, match="not one of the models shipped"):
        load_checkpoint(folder)
    assert main([str(small_zip), "--weights", str(folder / "tiny-newer.json")]) == EXIT_MODEL
    assert "tiny-newer.json is not verified" in capsys.readouterr().err
    loaded = load_checkpoint(folder, allow_unverified=True)
    assert loaded.name == "tiny-newer" and not loaded.trust.verified


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda c: c.update(input_size=20000), "input_size 20000 is not a whole number"),
        (lambda c: c.update(input_size=True), "input_size True"),
        (lambda c: c["windows"][1].update(width=0), "window 2 width 0"),
        (lambda c: c["windows"][2].update(level="NaN"), "window 3 level 'NaN'"),
        (lambda c: c.update(windows=c["windows"][:2]), "windows must list 3 windows"),
        (lambda c: c.update(calibration={"temperature": {"any": -1}}), "temperature for any"),
        (
            lambda c: c.update(calibration={"bleed_map_density": {"floor_hu": 5}}),
            "bleed_map_density",
        ),
        (lambda c: c.update(operating_thresholds={"study_any": 1.5}), "study_any (1.5)"),
        (lambda c: c.update(operating_thresholds={"slice_any": 0}), "slice_any (0)"),
        (lambda c: c.update(bleed_map={"stride": 3}), "bleed_map"),
        (lambda c: c.update(summary=["a list"]), "summary must be text"),
        (lambda c: c.update(arch="resnet9000"), "arch 'resnet9000'"),
        (lambda c: c.update(weights_sha256="0" * 64), "other than its files"),
        (lambda c: c.update(labels=list(reversed(c["labels"]))), "order"),
    ],
)
def test_an_out_of_range_card_is_refused_even_with_the_flag(
    shipped_tiny: Path, small_zip: Path, change: Any, words: str, capsys: Any
) -> None:
    _edit(shipped_tiny, lambda c: (change(c), c.update(stamp(c))))  # even re-stamped
    with pytest.raises(ModelError) as err:
        load_checkpoint(shipped_tiny, allow_unverified=True)
    assert words in str(err.value) and not isinstance(err.value, UnverifiedModelError)
    assert "Traceback" not in str(err.value)
    _no_traceback_from_the_cli(shipped_tiny, small_zip, capsys)


def test_nan_in_a_card_is_refused(shipped_tiny: Path) -> None:
    text = shipped_tiny.read_text(encoding="utf-8")
    shipped_tiny.write_text(text.replace('"level": 40', '"level": NaN', 1), encoding="utf-8")
    with pytest.raises(ModelError, match="is damaged and cannot be read"):
        load_checkpoint(shipped_tiny, allow_unverified=True)


def test_predict_reads_ich_weights(
    shipped_tiny: Path, small_zip: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("ICH_WEIGHTS", str(shipped_tiny.parent))
    assert main([str(small_zip), "--no-volume", "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"]["name"] == "tiny-test" and doc["model"]["status"] == "verified"


def test_the_integrity_command_prints_the_manifest_line(shipped_tiny: Path, capsys: Any) -> None:
    card = json.loads(shipped_tiny.read_text(encoding="utf-8"))
    assert integrity.main([str(shipped_tiny)]) == 0
    out = capsys.readouterr().out
    assert f'ShippedModel("tiny-test", "{card["content_sha256"]}"' in out and "matches" in out
