"""int8 (NNCF post-training quantization) in the OpenVINO engine, the speed probe that chooses
between precisions and batch sizes, and the pruning of the IR cache.

On the tiny network with the bleed-map head, quantized on a few synthetic head phantoms
(seconds): the quantized IR keeps both outputs, is found in the cache, is held to the load
check (refused when it fails: the engine falls back to what it used before), and is chosen
only when the speed probe finds it fastest. The shipped model's int8 figures on real slices
come from ``python -m core.quantize`` (tests/test_quantize.py runs that door on the tiny model).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

import core.inference.openvino_backend as ovb
from core.dicom.study import Study, load_studies
from core.inference.int8 import quantize_ir, save_int8
from core.inference.openvino_backend import (
    INT8_RECORD,
    LOGITS,
    MAP_LOGITS,
    PROBE_FILE,
    CheckResult,
    available_precisions,
    find_int8_ir,
    int8_folder_name,
    ir_folder,
    load_ir,
    open_engine,
    probe_batch,
    prune_ir_cache,
    read_int8_record,
)
from core.inference.predictor import Predictor, ResultCache
from core.model.checkpoint import (
    LoadedModel,
    ModelSpec,
    load_checkpoint,
)

SPEC = ModelSpec("tiny", 64, bleed_map=True)
DIGEST = "c0ffee" * 10


def _reopen_without_timing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """For a second open_engine: timing again fails the test (the probe's figures are kept),
    and the returned list collects the precisions compiled."""

    def no_timing(*_: object, **__: object) -> float:
        raise AssertionError("timed again although the probe's figures are kept")

    compiled: list[str] = []
    real_compile = ovb.compile_engine

    def counting(ir, precision, with_map):  # noqa: ANN001, ANN202
        compiled.append(precision)
        return real_compile(ir, precision, with_map)

    monkeypatch.setattr(ovb, "_time_batch", no_timing)
    monkeypatch.setattr(ovb, "compile_engine", counting)
    return compiled


@pytest.fixture(scope="module")
def int8_data(tmp_path_factory: pytest.TempPathFactory, tiny_card: Path) -> Path:
    """One data folder holding the tiny net's f32 IR and its int8 IR, quantized once on eight
    synthetic phantoms; each test copies it (a test may break or prune it)."""
    root = tmp_path_factory.mktemp("int8-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICH_REVIEW_DATA", str(root))
        loaded = _loaded(tiny_card)
        ir, _ = load_ir(loaded, loaded.model)
        quantized = quantize_ir(ir, probe_batch(SPEC, 8).numpy())
        save_int8(loaded, quantized, DIGEST, {"calibration": {"slices": 8}})
    return root


@pytest.fixture
def with_int8(int8_data: Path, tmp_path: Path, monkeypatch) -> Path:
    """This test's own data folder, with the f32 and int8 IR of the tiny net."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(int8_data, root)
    monkeypatch.setenv("ICH_REVIEW_DATA", str(root))
    return root


@pytest.fixture(scope="module")
def study(small_zip: Path) -> Study:
    return load_studies(small_zip)[0]


def _loaded(card: Path) -> LoadedModel:
    # The tiny test model is not a shipped one: allowed explicitly, as a user would.
    return load_checkpoint(card, allow_unverified=True)


def _fixed_speeds(monkeypatch, ms: dict[str, float]) -> list[tuple[str, int]]:
    """Make the speed probe read ``ms`` (precision → ms/slice at any batch, slower by 1 ms at
    every batch size other than 8) instead of timing; returns what it was asked to time."""
    asked: list[tuple[str, int]] = []

    def timed(engine, x, runs, warm) -> float:
        asked.append((engine.precision, len(x)))
        return ms[engine.precision] + (0.0 if len(x) == 8 else 1.0)

    monkeypatch.setattr(ovb, "_time_batch", timed)
    return asked


# --------------------------------------------------------------------------- the int8 IR


def test_int8_ir_keeps_both_outputs_and_is_found_in_the_cache(
    tiny_card: Path, with_int8: Path
) -> None:
    import openvino as ov

    loaded = _loaded(tiny_card)
    folder = find_int8_ir(loaded)
    assert folder is not None and folder.parent == ir_folder(loaded)
    assert folder.parent.parent == with_int8 / "openvino"  # in the app's data folder
    assert folder.name == int8_folder_name(DIGEST)
    assert ovb.nncf_version() in folder.name and DIGEST[:16] in folder.name
    record = read_int8_record(folder)
    assert record["weights_sha256"] == loaded.weights_sha256
    assert record["calibration_digest"] == DIGEST and record["nncf"] == ovb.nncf_version()
    ir = ov.Core().read_model(folder / "model.xml")
    assert [sorted(o.get_names()) for o in ir.outputs] == [[LOGITS], [MAP_LOGITS]]
    # Quantized: the graph holds FakeQuantize operations the f32 IR has none of.
    kinds = {op.get_type_name() for op in ir.get_ordered_ops()}
    f32_kinds = {op.get_type_name() for op in load_ir(loaded, loaded.model)[0].get_ordered_ops()}
    assert "FakeQuantize" in kinds and "FakeQuantize" not in f32_kinds


def test_no_int8_without_its_folder_or_record(tiny_card: Path, with_int8: Path) -> None:
    loaded = _loaded(tiny_card)
    folder = find_int8_ir(loaded)
    assert folder is not None
    (folder / INT8_RECORD).unlink()  # a half-written or foreign folder is not used
    assert find_int8_ir(loaded) is None
    with pytest.raises(RuntimeError, match="python -m core.quantize"):
        open_engine(loaded, loaded.model, "int8")


def test_a_new_int8_replaces_the_older_one(tiny_card: Path, with_int8: Path) -> None:
    loaded = _loaded(tiny_card)
    old = find_int8_ir(loaded)
    assert old is not None
    import openvino as ov

    quantized = ov.Core().read_model(old / "model.xml")
    new = save_int8(loaded, quantized, "feed" * 16, {})
    assert find_int8_ir(loaded) == new != old
    assert not old.exists()


def test_int8_engine_passes_the_load_check_and_scores_like_torch(
    tiny_card: Path, with_int8: Path, study: Study
) -> None:
    reference = Predictor(_loaded(tiny_card), "cpu", cache=ResultCache(), backend="torch")
    p = Predictor(
        _loaded(tiny_card), "cpu", cache=ResultCache(), backend="openvino", precision="int8"
    )
    assert p.engine is not None and p.backend_name.endswith(" int8")
    assert p.engine.check is not None and p.engine.check.passed
    assert p.engine.check.max_dp > 0  # it is not the f32 model under another name
    got, want = p.predict(study), reference.predict(study)
    assert got.bleed_map is not None and want.bleed_map is not None
    np.testing.assert_allclose(got.probs, want.probs, atol=0.05)
    assert float(np.abs(got.probs - want.probs).max()) > 0


# --------------------------------------------------------------------------- choice


def test_auto_picks_int8_when_it_passes_and_is_fastest(
    tiny_card: Path, with_int8: Path, monkeypatch, caplog
) -> None:
    asked = _fixed_speeds(monkeypatch, {"int8": 2.0, "bf16": 3.0, "f32": 5.0})
    caplog.set_level(logging.INFO, logger="core.inference.predictor")
    p = Predictor(_loaded(tiny_card), "cpu", cache=ResultCache(), backend="auto")
    assert p.engine is not None and p.engine.precision == "int8"
    assert p.batch_size == 8 == p.engine.batch_size  # the probe's fastest size
    # Every passing precision timed at the compare batch, then int8 at the other sizes.
    offered = {"int8", *available_precisions()}
    assert {q for q, n in asked if n == ovb.COMPARE_BATCH} == offered
    assert {n for q, n in asked if q == "int8"} == set(ovb.PROBE_BATCH_SIZES)
    lines = [r.getMessage() for r in caplog.records if "forward pass on" in r.getMessage()]
    assert len(lines) == 1
    # At the compare batch (4) the fake figures are 1 ms above the given ones.
    assert "int8, batch 8" in lines[0] and "int8 3.0" in lines[0] and "f32 6.0" in lines[0]
    assert "measured now" in lines[0]


def test_the_fastest_wins_even_when_int8_is_on_offer(
    tiny_card: Path, with_int8: Path, monkeypatch
) -> None:
    _fixed_speeds(monkeypatch, {"int8": 9.0, "bf16": 3.0, "f32": 4.0})
    engine = open_engine(_loaded(tiny_card), _loaded(tiny_card).model)
    assert engine.precision == available_precisions()[0]  # bf16 where offered, else f32
    assert engine.probe is not None and engine.probe.by_precision["int8"] == 10.0


def test_the_probe_stays_within_its_time_budget(
    tiny_card: Path, with_int8: Path, monkeypatch
) -> None:
    # 400 ms/slice: batch 1 fits the budget (3 passes, 1.2 s), batch 8 (two passes of 3.2 s)
    # does not, so neither it nor 16 is tried, and the choice is among what was timed.
    asked = _fixed_speeds(monkeypatch, {"int8": 400.0, "bf16": 500.0, "f32": 600.0})
    loaded = _loaded(tiny_card)
    engine = open_engine(loaded, loaded.model, "int8")
    assert {n for _, n in asked} == {ovb.COMPARE_BATCH, 1}
    assert engine.probe is not None and set(engine.probe.by_batch) == {ovb.COMPARE_BATCH, 1}
    assert engine.batch_size == ovb.COMPARE_BATCH  # 401 ms/slice at both: the larger wins


def test_the_probe_runs_once_per_machine_and_model(
    tiny_card: Path, with_int8: Path, monkeypatch
) -> None:
    _fixed_speeds(monkeypatch, {"int8": 2.0, "bf16": 3.0, "f32": 5.0})
    loaded = _loaded(tiny_card)
    first = open_engine(loaded, loaded.model)
    kept = json.loads((ir_folder(loaded) / PROBE_FILE).read_text())
    assert kept["machine"] == ovb.machine_key()

    compiled = _reopen_without_timing(monkeypatch)
    again = open_engine(loaded, loaded.model)
    assert again.precision == first.precision == "int8"
    assert again.batch_size == first.batch_size
    assert again.probe is not None and again.probe.cached
    assert compiled == ["int8"]  # the kept ranking: only the fastest compiled and checked

    # Another machine (other CPU figures): probed again.
    monkeypatch.setattr(ovb, "machine_key", lambda: {"cpu": "another"})
    with pytest.raises(AssertionError, match="timed again"):
        open_engine(loaded, loaded.model)


def test_int8_failing_the_load_check_is_refused_and_the_engine_falls_back(
    tiny_card: Path, with_int8: Path, monkeypatch, caplog
) -> None:
    _fixed_speeds(monkeypatch, {"int8": 2.0, "bf16": 3.0, "f32": 5.0})
    real_check = ovb.check_engine

    def int8_fails(engine, *args, **kw) -> CheckResult:
        result = real_check(engine, *args, **kw)
        if engine.precision == "int8":  # as if its probabilities were off by 0.5
            return CheckResult("int8", 0.5, result.max_dmap, result.tolerance)
        return result

    monkeypatch.setattr(ovb, "check_engine", int8_fails)
    caplog.set_level(logging.WARNING)
    p = Predictor(_loaded(tiny_card), "cpu", cache=ResultCache(), backend="auto")
    assert p.engine is not None and p.engine.precision in available_precisions()
    assert any("OpenVINO int8 refused" in r.getMessage() for r in caplog.records)


def test_a_refusal_is_remembered_with_the_probe(
    tiny_card: Path, with_int8: Path, monkeypatch
) -> None:
    _fixed_speeds(monkeypatch, {"int8": 2.0, "bf16": 3.0, "f32": 5.0})
    real_check = ovb.check_engine

    def int8_fails(engine, *args, **kw) -> CheckResult:
        result = real_check(engine, *args, **kw)
        if engine.precision == "int8":
            return CheckResult("int8", 0.5, result.max_dmap, result.tolerance)
        return result

    monkeypatch.setattr(ovb, "check_engine", int8_fails)
    loaded = _loaded(tiny_card)
    first = open_engine(loaded, loaded.model)
    assert first.precision != "int8"
    kept = json.loads((ir_folder(loaded) / PROBE_FILE).read_text())
    assert list(kept["refused"]) == [f"int8:{find_int8_ir(loaded).name}"]  # type: ignore[union-attr]

    compiled = _reopen_without_timing(monkeypatch)
    again = open_engine(loaded, loaded.model)
    assert again.precision == first.precision and compiled == [first.precision]


def test_a_tolerance_of_zero_refuses_int8(tiny_card: Path, with_int8: Path) -> None:
    loaded = _loaded(tiny_card)
    with pytest.raises(RuntimeError, match=r"no OpenVINO precision passed.*int8"):
        open_engine(loaded, loaded.model, "int8", tolerance=0.0)


def test_without_the_int8_ir_the_engine_uses_what_it_used_before(
    tiny_card: Path, monkeypatch
) -> None:
    _fixed_speeds(monkeypatch, {"int8": 2.0, "bf16": 3.0, "f32": 5.0})
    loaded = _loaded(tiny_card)
    assert find_int8_ir(loaded) is None  # a fresh data folder: never quantized
    engine = open_engine(loaded, loaded.model)
    assert engine.precision == available_precisions()[0]


# --------------------------------------------------------------------------- pruning


def _fake_ir(root: Path, name: str, age_s: float) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "model.xml").write_text("<net/>")
    stamp = folder.stat().st_mtime - age_s
    os.utime(folder, (stamp, stamp))
    return folder


def test_a_new_ir_folder_prunes_the_old_ones(tiny_card: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ICH_REVIEW_DATA", str(tmp_path))
    loaded = _loaded(tiny_card)
    current = ir_folder(loaded)
    root = current.parent
    version = current.name.rpartition("-ov")[2]
    old_ov = _fake_ir(root, current.name.replace(f"-ov{version}", "-ov2024.1.0"), 10)
    recent_other = _fake_ir(root, f"{'a' * 24}-tiny-64px-ov{version}", 100)
    older_other = _fake_ir(root, f"{'b' * 24}-tiny-64px-ov{version}", 5000)
    writing = _fake_ir(root, ".tmp-abc", 5000)  # another process converting: left alone
    _, cached = load_ir(loaded, loaded.model)
    assert not cached and (current / "model.xml").is_file()
    assert not old_ov.exists()  # another OpenVINO: never read again
    assert not older_other.exists()  # other weights beyond the most recently used
    assert recent_other.exists() and writing.exists()
    # Reading the cached IR prunes nothing (only a new folder does).
    again = _fake_ir(root, f"{'c' * 24}-tiny-64px-ov{version}", 9000)
    assert load_ir(loaded, loaded.model)[1] and again.exists()
    assert prune_ir_cache(current) == [again]
