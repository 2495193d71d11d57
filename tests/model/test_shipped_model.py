"""The model shipped in weights/: present on a fresh clone, verified, described by its card with
figures measured on data it never trained on, used by default by the engine and the command
line, and ranking real bleeding studies above normal ones as its card says."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from data_paths import LABELLED

from core.dicom.study import load_studies
from core.inference.predictor import Predictor, ResultCache
from core.labels import LABELS
from core.model.checkpoint import (
    DEFAULT_WEIGHTS_DIR,
    MAX_SHARD_BYTES,
    find_default_checkpoint,
    load_checkpoint,
)
from core.training.metrics import roc_auc

ROOT = Path(__file__).resolve().parents[1]


def _card() -> Path:
    card = find_default_checkpoint(DEFAULT_WEIGHTS_DIR)
    assert card is not None, f"no model card in {DEFAULT_WEIGHTS_DIR}: the trained model must ship"
    return card


def _figures(card: dict, start: str) -> dict:
    return next(m["values"] for m in card["metrics"] if m["measured_on"].startswith(start))


def test_shipped_card_records_held_out_figures_calibration_and_thresholds() -> None:
    card = json.loads(_card().read_text(encoding="utf-8"))
    assert card["arch"] == "resnext101_32x4d" and card["labels"] == list(LABELS)
    assert all(w["low"] >= 0 and w["high"] <= 80 for w in map(_span, card["windows"]))
    val = _figures(card, "held-out validation slices of rsna_png")
    studies = _figures(card, "16 whole DICOM studies never trained on")
    assert val["slices"] == card["split"]["val_slices"] and studies["studies"] == 16
    for block in (val, studies):
        assert block["weighted_log_loss"] < block["constant_prior_weighted_log_loss"]
        assert block["slice_auc"]["any"] > 0.5
    assert studies["slice_auc"]["epidural"] == "not measurable"  # no epidural case there
    assert set(card["calibration"]["temperature"]) == set(LABELS)
    threshold = card["operating_thresholds"]["slice_any"]
    assert 0 < threshold < 1 and card["operating_thresholds"]["study_any"] == threshold
    assert "research" in card["summary"].lower() and "radiologist" in card["summary"]
    assert "python -m core.train" in card["command"] and "--png-dir" in card["command"]
    assert "python -m core.calibrate" in card["calibration"]["command"]
    assert card["weights_dtype"] == "float16"
    for entry in card["weights_files"]:
        assert entry["bytes"] < MAX_SHARD_BYTES  # each file fits GitHub's 100 MB limit


def _span(window: dict) -> dict:
    return {
        "low": window["level"] - window["width"] / 2,
        "high": window["level"] + window["width"] / 2,
    }


def test_the_card_figures_on_whole_studies_are_what_the_shipped_files_give(
    study_zips: list[Path],
) -> None:
    """Re-measured here through the app's loader and engine: the card's slice and study AUC on
    the 16 shared studies (none of them trained on) must be what these weights produce."""
    card = json.loads(_card().read_text(encoding="utf-8"))
    studies = _figures(card, "16 whole DICOM studies never trained on")
    with (LABELLED / "rsna_dev_labels.csv").open(newline="") as fh:
        labels = {r["image_id"]: [int(r[k]) for k in LABELS] for r in csv.DictReader(fh)}
    predictor = Predictor(load_checkpoint(_card()), "cpu", cache=ResultCache())
    y, p, y_study, p_study = [], [], [], []
    for path in study_zips:
        study = load_studies(path)[0]
        assert not predictor.seen_in_training(study.study_instance_uid)
        prediction = predictor.predict(study)
        rows = [labels[s.sop_instance_uid] for s in prediction.slices]
        y += rows
        p += [s.probabilities for s in prediction.slices]
        y_study.append(max(r[0] for r in rows))
        p_study.append(prediction.study_scores["any"])
    y_arr, p_arr = np.array(y), np.array(p)
    assert abs(roc_auc(y_arr[:, 0], p_arr[:, 0]) - studies["slice_auc"]["any"]) < 0.005
    assert abs(roc_auc(np.array(y_study), np.array(p_study)) - studies["study_auc_any"]) < 0.005


def test_shipped_model_loads_verified_and_scores_a_study(unlabelled_zip: Path) -> None:
    loaded = load_checkpoint(_card())  # checksums and label order verified
    assert loaded.context is None  # the study score is the most suspicious slice
    assert all(
        p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in loaded.model.parameters()
    )
    predictor = Predictor(loaded, "cpu", cache=ResultCache())
    assert predictor.temperature == tuple(
        loaded.card.calibration["temperature"][label] for label in LABELS
    )
    prediction = predictor.predict(load_studies(unlabelled_zip)[0])
    assert np.isfinite(prediction.probs).all()
    assert ((prediction.probs >= 0) & (prediction.probs <= 1)).all()
    assert prediction.study_scores["any"] == float(prediction.probs[:, 0].max())


def test_predict_command_uses_the_shipped_model_without_options(unlabelled_zip: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "core.predict", str(unlabelled_zip), "--json", "-", "--no-volume"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["model"]["card"] == _card().name
    assert doc["studies"][0]["in_training_data"] is False  # the demo study was never trained on
    assert "maximum" in doc["study_score"]
