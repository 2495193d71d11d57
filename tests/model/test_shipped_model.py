"""The model shipped in weights/: present on a fresh clone, verified, described by its card with
cross-validated numbers, and used by default by the engine and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from core.dicom.study import load_studies
from core.inference.predictor import Predictor, ResultCache
from core.labels import LABELS
from core.model.checkpoint import (
    DEFAULT_WEIGHTS_DIR,
    MAX_SHARD_BYTES,
    find_default_checkpoint,
    load_checkpoint,
)

ROOT = Path(__file__).resolve().parents[2]


def _card() -> Path:
    card = find_default_checkpoint(DEFAULT_WEIGHTS_DIR)
    assert card is not None, f"no model card in {DEFAULT_WEIGHTS_DIR}: the trained model must ship"
    return card


def test_shipped_card_records_cross_validation_and_baseline() -> None:
    card = json.loads(_card().read_text(encoding="utf-8"))
    assert card["arch"].startswith("resnext101") and card["labels"] == list(LABELS)
    (data, cv), *_ = card["metrics"].items()
    assert data.startswith("cross-validation:") and "never saw it" in data
    for key in ("slice_auc_any", "slice_auc_any_ci95", "study_auc_any_max_over_slices"):
        assert key in cv
    assert cv["slice_auc"]["epidural"] == "not measurable"
    assert cv["constant_prior_baseline"]["slice_auc_any"] == 0.5
    assert "with_slice_context" in cv and "study_auc_any" in cv["with_slice_context"]
    threshold = card["operating_thresholds"]["study_any"]
    if cv["with_slice_context"]["study_auc_any"] > 0.5:
        assert 0 < threshold < 1
    else:  # no operating point on a ranking worse than chance
        assert threshold is None
    assert "research" in card["summary"].lower() or "demonstration" in card["summary"].lower()
    assert "python -m core.train" in card["command"]
    for entry in card["weights_files"]:
        assert entry["bytes"] < MAX_SHARD_BYTES  # each file fits GitHub's 100 MB limit
    report = _card().parent / card["cross_validation_report"]
    assert json.loads(report.read_text(encoding="utf-8"))["headline"] == cv


def test_shipped_model_loads_verified_with_its_context_model_and_scores_a_study(
    unlabelled_zip: Path,
) -> None:
    loaded = load_checkpoint(_card())  # checksums and label order verified
    assert loaded.context is not None
    predictor = Predictor(loaded, "cpu", cache=ResultCache())
    prediction = predictor.predict(load_studies(unlabelled_zip)[0])
    assert prediction.context_used
    assert np.isfinite(prediction.probs).all()
    assert ((prediction.probs >= 0) & (prediction.probs <= 1)).all()
    assert 0.0 <= prediction.study_scores["any"] <= 1.0


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
    assert "slice-context" in doc["study_score"]


def test_training_studies_are_marked_in_sample(
    study_zips: list[Path], unlabelled_zip: Path
) -> None:
    predictor = Predictor(load_checkpoint(_card()), "cpu", cache=ResultCache())
    for path in study_zips:  # the 16 labelled studies trained the shipped model
        assert predictor.seen_in_training(load_studies(path)[0].study_instance_uid)
    assert not predictor.seen_in_training(load_studies(unlabelled_zip)[0].study_instance_uid)
