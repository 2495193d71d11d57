"""core.inference.prediction_json: the one writer of ``core.predict --json`` and the training
run's val_predictions.json reads back as written, keeps its key and label order, and never
leaves a partial file."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from core.inference import prediction_json
from core.inference.prediction_json import (
    dumps,
    prediction_document,
    write_prediction_json,
)
from core.inference.predictor import SlicePrediction, StudyPrediction
from core.labels import LABELS
from core.notice import NOTICE


def _study(uid: str, seed: int) -> dict[str, object]:
    """A StudyPrediction's JSON summary, as both writers start from."""
    probs = np.random.default_rng(seed).random((3, len(LABELS))).astype(np.float32)
    prediction = StudyPrediction(
        study_instance_uid=uid,
        series_instance_uid=uid + ".1",
        weights_identity="test@000000000000",
        slices=tuple(
            SlicePrediction(i, f"{uid}.1.{i}", 5.0 * i, tuple(float(v) for v in row))
            for i, row in enumerate(probs)
        ),
        probs=probs,
        study_scores={label: float(probs[:, j].max()) for j, label in enumerate(LABELS)},
        peak_slice={label: int(probs[:, j].argmax()) for j, label in enumerate(LABELS)},
        seconds=0.0,
    )
    summary = prediction.to_dict()
    summary["warnings"] = ["Gantry tilt 12° — résumé"]  # non-ASCII stays as it is
    return summary


@pytest.fixture
def document() -> dict[str, object]:
    return prediction_document(
        {"weights_identity": "test@000000000000", "arch": "tiny", "input_size": 64},
        "maximum over the slices of the series",
        [_study("1.2.3", 0), _study("1.2.4", 1)],
        runtime={"device": "cpu", "backend": "torch fp32"},
        evaluation={"split": {"val_studies": 2}, "metrics": {"auc_any": 0.5}},
    )


def test_document_keys_and_labels_come_in_their_order(document) -> None:
    assert list(document) == [
        "notice", "model", "device", "backend", "labels", "study_score", "split", "metrics",
        "studies",
    ]  # fmt: skip
    assert document["notice"] == NOTICE
    assert document["labels"] == [
        "any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural",
    ]  # fmt: skip
    bare = prediction_document({}, "max", [])
    assert list(bare) == ["notice", "model", "labels", "study_score", "studies"]


def test_round_trip_keeps_content_order_and_text(document, tmp_path: Path) -> None:
    path = tmp_path / "predictions.json"
    write_prediction_json(path, document)
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert "12° — résumé" in text  # written as UTF-8, not \u escapes
    assert text == dumps(document) and text.startswith('{\n  "notice"')  # indent 2
    back = json.loads(text)
    assert back == document
    assert list(back) == list(document)
    for study in back["studies"]:
        assert list(study["probabilities"]) == list(LABELS)
        for entry in study["slices"]:
            assert list(entry["probabilities"]) == list(LABELS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.json"]  # no .tmp left

    write_prediction_json(path, document, indent=1)  # the training run's indent, replacing
    assert path.read_text(encoding="utf-8").startswith('{\n "notice"')
    assert json.loads(path.read_text(encoding="utf-8")) == document


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(
    document, tmp_path: Path, monkeypatch
) -> None:
    path = tmp_path / "val_predictions.json"
    path.write_text("old\n", encoding="utf-8")

    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prediction_json.os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        write_prediction_json(path, document)
    assert path.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val_predictions.json"]

    monkeypatch.undo()
    with pytest.raises(TypeError):  # not JSON: nothing is written at all
        write_prediction_json(path, {**document, "metrics": object()})
    assert path.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val_predictions.json"]


def test_a_pipe_is_written_in_place(document, tmp_path: Path) -> None:
    """A FIFO (or /dev/stdout) cannot be replaced by a file: it gets the text itself."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(
        target=lambda: got.append(fifo.read_text(encoding="utf-8")), daemon=True
    )
    reader.start()
    write_prediction_json(fifo, document)
    reader.join(timeout=10)
    assert got and json.loads(got[0]) == document
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
