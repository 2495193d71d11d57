"""``python -m core.quantize`` on the tiny network with the real rsna_png slices: it builds the
int8 IR from the training split, measures it on the validation split, keeps it only when it
passes the guard, and the engine then offers it."""

from __future__ import annotations

import json
from pathlib import Path

from data_paths import DATA, require

from core import quantize
from core.inference.int8 import save_int8
from core.inference.openvino_backend import (
    available_precisions,
    find_int8_ir,
    load_ir,
    open_engine,
)
from core.model.checkpoint import load_checkpoint


def _run(card: Path, *extra: str, json_path: Path) -> int:
    return quantize.main(
        [
            "--weights",
            str(card),
            "--allow-unverified",
            "--data",
            str(require(DATA)),
            "--json",
            str(json_path),
            *extra,
        ]
    )


def test_refused_by_the_guard_nothing_is_kept(tiny_card: Path, tmp_path: Path, capsys) -> None:
    status = _run(tiny_card, "--tolerance", "0", json_path=tmp_path / "r.json")
    assert status == 1
    out = capsys.readouterr().out
    assert "int8 REFUSED" in out and "AUC torch fp32" in out
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["passed"] is False and record["refused_because"]
    assert record["calibration"]["slices"] == 128
    assert record["calibration"]["positive_any"] == 64
    assert record["validation"]["slices"] == 569  # the card's validation split
    loaded = load_checkpoint(tiny_card, allow_unverified=True)
    assert find_int8_ir(loaded) is None and find_int8_ir(loaded, refused=True) is None


def test_kept_refused_for_measuring_is_never_offered(tiny_card: Path) -> None:
    """What ``--keep-refused`` keeps (a record saying passed: false), without the door's
    minute: the engine never offers it, core.bench finds it."""
    loaded = load_checkpoint(tiny_card, allow_unverified=True)
    ir, _ = load_ir(loaded, loaded.model)
    folder = save_int8(loaded, ir, "0" * 64, {"passed": False})
    assert find_int8_ir(loaded, refused=True) == folder
    assert find_int8_ir(loaded) is None
    assert open_engine(loaded, loaded.model, probe=False).precision != "int8"


def test_passing_the_guard_it_is_kept_and_offered(
    tiny_card: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    # The untrained tiny net's AUCs are noise: the guard is widened here to test the keeping,
    # the refusing is tested above.
    monkeypatch.setattr(quantize, "MAX_DAUC", 1.0)
    status = _run(tiny_card, "--tolerance", "1", json_path=tmp_path / "k.json")
    assert status == 0, capsys.readouterr().out
    loaded = load_checkpoint(tiny_card, allow_unverified=True)
    folder = find_int8_ir(loaded)
    assert folder is not None and f"kept in {folder}" in capsys.readouterr().out
    record = json.loads((folder / "int8.json").read_text())
    assert record["passed"] is True and record["weights_sha256"] == loaded.weights_sha256
    engine = open_engine(loaded, loaded.model, "int8", tolerance=1.0, probe=False)
    assert engine.precision == "int8" and engine.ir_path == folder
    assert available_precisions()[-1] == "f32"
