"""core.training.bleed_map_check: the map's threshold from synthetic bleeds, its figures on the
real hand-drawn masks (the whole study's masks give the 15.5 mL the data's README states)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from data_paths import DATA, LABELLED, require

from core.imaging.volume import DENSITY_RULES, DensityRule
from core.inference.predictor import Predictor, ResultCache
from core.model.checkpoint import ModelSpec, build_model, load_checkpoint, save_checkpoint
from core.training.bleed_map_check import (
    THRESHOLDS,
    dice,
    hemseg_report,
    phantom_report,
    read_hemseg,
    synthetic_threshold,
)
from core.training.dataset import read_challenge_labels

HEMSEG = DATA / "hemseg"
PNG_DIR = DATA / "rsna_png" / "images"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    """An untrained tiny model with the head (test fixture: its map means nothing)."""
    spec = ModelSpec("tiny", 64, bleed_map=True)
    torch.manual_seed(0)
    card = save_checkpoint(build_model(spec).eval(), spec, tmp_path_factory.mktemp("w"), "m")
    return Predictor(load_checkpoint(card, allow_unverified=True), "cpu", cache=ResultCache())


def test_dice_is_pooled_and_undefined_when_both_are_empty() -> None:
    a = np.zeros((2, 4, 4), bool)
    assert dice(a, a) is None
    b = a.copy()
    b[0, :2, :2] = True
    assert dice(b, b) == 1.0 and dice(b, a) == 0.0


def test_threshold_is_chosen_on_synthetic_bleeds(predictor: Predictor) -> None:
    labels = read_challenge_labels(DATA / "rsna_png" / "rsna_png_stage_2_train.csv")
    normal = sorted(k for k, v in labels.items() if v.max() == 0)[:12]
    out = synthetic_threshold(predictor, require(PNG_DIR), normal, limit=3)
    assert out["threshold"] in THRESHOLDS and 1 <= out["slices"] <= 3
    scores = out["dice_by_threshold"]
    assert len(scores) == len(THRESHOLDS) and all(0 <= v <= 1 for v in scores.values())
    assert out["dice"] == max(scores.values())
    # the density rule is chosen with it, among the calibrated rules, by the same Dice
    assert DensityRule(**out["density"]) in DENSITY_RULES
    by_rule = out["best_dice_by_density"]
    assert len(by_rule) == len(DENSITY_RULES) and out["dice"] == max(r["dice"] for r in by_rule)


def test_report_on_hand_drawn_masks_reads_them_as_the_data_describes(
    predictor: Predictor,
) -> None:
    rows = read_hemseg(require(HEMSEG) / "hemseg_masks.csv")
    assert len(rows) == 115 and sum(r.mask_pixels > 0 for r in rows) == 30
    report = hemseg_report(predictor, HEMSEG, PNG_DIR, LABELLED / "studies", 0.5)
    png = report["brain_window_slices"]
    assert png["slices_with_blood"] == 19 and png["slices_without_blood"] == 60
    # 30 slices carry blood (19 PNG, 11 of the study), 85 none (60 + 25)
    assert report["slices_with_blood"] == 30 and report["slices_without_blood"] == 85
    assert len(report["dice_per_slice"]) == 30
    (study,) = report["whole_studies"]
    assert study["study"] == "ID_286f17f9e7" and study["slices_with_a_mask"] == 36
    # The data's README gives 15.5 mL with the steps along the table (2.7 / 5.4 mm); the
    # series is tilted 22° (ImageOrientationPatient), so its slices lie 2.5 / 5.0 mm apart
    # along their normal, and a voxel holds cos(22°) of what the table steps suggest.
    tilt = math.degrees(math.acos(0.927184))
    assert study["hand_drawn_ml"] == pytest.approx(15.5 * math.cos(math.radians(tilt)), abs=0.1)
    assert 0 <= study["dice"] <= 1 and study["bleed_map_ml"] >= 0


def test_phantom_hematomas_are_measured_through_the_engine(
    predictor: Predictor, study_zips
) -> None:
    from core.dicom.study import load_studies

    study = load_studies(min(study_zips, key=lambda p: p.stat().st_size))[0]
    (row,) = phantom_report(predictor, study, volumes_ml=(20.0,), map_threshold=0.5)
    assert row["true_ml"] == pytest.approx(20.0, rel=1e-6)
    assert row["estimated_ml"] >= 0 and 0 <= row["dice"] <= 1
