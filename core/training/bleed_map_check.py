"""How good the bleed map is: its threshold chosen on synthetic bleeds, its outline and volume
measured on real hand-drawn masks.

Why two kinds of data, kept apart: the threshold must be chosen on data whose blood is known
and that the model never trained on, and the only real outlines here (hemseg, 115 slices) are
too few to both tune and report on. So the threshold is chosen on synthetic bleeds painted
into the held-out normal validation slices (core.imaging.synthesis, seeded by image id, the
same every run), and the real masks only report: Dice on the brain-window slices with blood,
outlined area on those without, and on the one whole study (ID_286f17f9e7) the volume through
the app's own loader, engine and ``Predictor.localise``, against the masks' 15.5 mL.

Dice is pooled (all pixels of all slices as one volume), the usual figure for a handful of
slices of very different sizes; per-slice Dice is not averaged because an empty slice has none.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.dicom.study import Study, load_studies
from core.imaging.synthesis import (
    DEFAULT_PIXEL_MM,
    ellipsoid_bleed,
    feasible_kinds,
    find_anatomy,
    synthesize,
)
from core.imaging.volume import DENSE, DENSITY_RULES, DensityRule, mask_from_bleed_map, measure
from core.imaging.windowing import model_input
from core.inference.predictor import Predictor
from core.training.checkpointing import derived_seed
from core.training.dataset import read_png_hu

#: Thresholds tried on the synthetic bleeds.
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.91, 0.05))


@dataclass(frozen=True)
class HemsegSlice:
    """One row of hemseg_masks.csv: a hand-drawn mask and where its slice lives."""

    image_id: str
    study_instance_uid: str
    source: str  # "rsna_png" or "rsna_ich:<study>"
    mask_pixels: int


def read_hemseg(csv_path: str | os.PathLike[str]) -> list[HemsegSlice]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return [
            HemsegSlice(r["image_id"], r["StudyInstanceUID"], r["source"], int(r["mask_pixels"]))
            for r in csv.DictReader(fh)
        ]


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """A hemseg mask PNG (255 = blood) → bool array on the slice's own grid."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def dice(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Pooled Dice of two boolean arrays; None when both are empty (nothing to agree on).

    >>> dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool))
    0.6666666666666666
    """
    total = int(pred.sum()) + int(truth.sum())
    return None if total == 0 else 2.0 * int((pred & truth).sum()) / total


def _maps(predictor: Predictor, hu: np.ndarray) -> np.ndarray:
    """Bleed-map probabilities (n, h, w) of HU slices (n, H, W), through the app's input."""
    spec = predictor.spec
    x = model_input(hu, spec.input_size, spec.windows).contiguous(memory_format=torch.channels_last)
    _, bleed = predictor.forward_with_map(x)
    if bleed is None:
        raise ValueError("this model has no bleed map (it was trained without --bleed-map)")
    return bleed.numpy()


def synthetic_threshold(
    predictor: Predictor,
    png_dir: Path,
    normal_ids: Sequence[str],
    limit: int = 240,
    batch: int = 16,
    rules: Sequence[DensityRule] = DENSITY_RULES,
) -> dict[str, Any]:
    """Paint one synthetic bleed (seeded by image id) into each of the first ``limit`` usable
    normal validation slices, and return the threshold and density rule whose pooled Dice is
    highest, with the Dice at every threshold tried under that rule and the best Dice of each
    rule. Ties go to the first rule (the densest): a paler rule must earn its place."""
    hits = np.zeros((len(rules), len(THRESHOLDS)))
    pred_sum = np.zeros((len(rules), len(THRESHOLDS)))
    truth_sum = 0
    used = 0
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def flush() -> None:
        nonlocal truth_sum
        if not pending:
            return
        hu = np.stack([h for h, _ in pending])
        truth = np.stack([m for _, m in pending])
        prob = _maps(predictor, hu)
        for r, rule in enumerate(rules):
            for k, t in enumerate(THRESHOLDS):
                pred = mask_from_bleed_map(
                    hu, prob, (DEFAULT_PIXEL_MM,) * 2, t, within_skull=False, rule=rule
                )
                hits[r, k] += int((pred & truth).sum())
                pred_sum[r, k] += int(pred.sum())
        truth_sum += int(truth.sum())
        pending.clear()

    for image_id in normal_ids:
        if used >= limit:
            break
        hu = read_png_hu(png_dir / f"{image_id}.png")
        anatomy = find_anatomy(hu, pixel_mm=DEFAULT_PIXEL_MM)
        if not feasible_kinds(anatomy):
            continue
        try:
            bleed = synthesize(hu, derived_seed(image_id), anatomy=anatomy)
        except ValueError:
            continue
        if not bleed.mask.any() or hu.shape != (512, 512):
            continue
        pending.append((bleed.hu, bleed.mask))
        used += 1
        if len(pending) == batch:
            flush()
    flush()
    scores = 2 * hits / np.maximum(pred_sum + truth_sum, 1)
    r_best, best = (int(v) for v in np.unravel_index(int(np.argmax(scores)), scores.shape))
    return {
        "threshold": THRESHOLDS[best],
        "density": rules[r_best].to_dict(),
        "dice": round(float(scores[r_best, best]), 4),
        "slices": used,
        "dice_by_threshold": {
            str(t): round(float(s), 4) for t, s in zip(THRESHOLDS, scores[r_best], strict=True)
        },
        "best_dice_by_density": [
            {**rule.to_dict(), "dice": round(float(scores[r].max()), 4)}
            for r, rule in enumerate(rules)
        ],
    }


def hemseg_report(
    predictor: Predictor,
    hemseg_dir: Path,
    png_dir: Path,
    studies_dir: Path | None,
    threshold: float,
    rule: DensityRule = DENSE,
) -> dict[str, Any]:
    """The map at ``threshold`` against the real masks: brain-window slices (pixels as the
    model's training PNGs hold them, no skull test: they have no bone in HU) and whole studies
    through the app's loader, engine and ``localise`` (volume, Dice). Per slice with blood: its
    Dice; per slice without: whether anything was outlined."""
    rows = read_hemseg(hemseg_dir / "hemseg_masks.csv")
    px = (DEFAULT_PIXEL_MM, DEFAULT_PIXEL_MM)
    bloody: list[dict[str, Any]] = []  # one per slice with blood, png and study alike
    clean: list[bool] = []  # one per slice without blood: nothing outlined
    preds, truths = [], []
    for r in (r for r in rows if r.source == "rsna_png"):
        hu = read_png_hu(png_dir / f"{r.image_id}.png")[None]
        truth = read_mask(hemseg_dir / "masks" / f"{r.image_id}.png")
        if truth.shape != hu.shape[1:]:
            continue
        pred = mask_from_bleed_map(
            hu, _maps(predictor, hu), px, threshold, within_skull=False, rule=rule
        )[0]
        if truth.any():
            preds.append(pred)
            truths.append(truth)
            bloody.append({"image": r.image_id, "where": "rsna_png", "dice": dice(pred, truth)})
        else:
            clean.append(not pred.any())
    png = {
        "slices_with_blood": len(preds),
        "dice_pooled": _round(dice(np.stack(preds), np.stack(truths)) if preds else None),
        "slices_without_blood": len(clean),
        "share_of_empty_slices_left_clean": _round(float(np.mean(clean)) if clean else None),
    }
    per_study = []
    with_study = {r.study_instance_uid for r in rows if r.source.startswith("rsna_ich:")}
    zips = [studies_dir / f"{uid}.zip" for uid in sorted(with_study)] if studies_dir else []
    for path in zips:
        uid = path.stem
        mine = {r.image_id for r in rows if r.study_instance_uid == uid}
        study = load_studies(path)[0]
        series = study.default_series
        truth3 = np.zeros(series.hu.shape, dtype=bool)
        for k, s in enumerate(series.slices):
            if s.sop_instance_uid in mine:
                truth3[k] = read_mask(hemseg_dir / "masks" / f"{s.sop_instance_uid}.png")
        z = [s.z for s in series.slices]
        spacing = series.pixel_spacing or (1.0, 1.0)
        estimate = predictor.localise(
            series, predictor.predict(study), map_threshold=threshold, map_density=rule
        )
        for k, s in enumerate(series.slices):
            if s.sop_instance_uid not in mine:
                continue
            if truth3[k].any():
                bloody.append(
                    {
                        "image": s.sop_instance_uid,
                        "where": uid,
                        "dice": dice(estimate.mask[k], truth3[k]),
                    }
                )
            else:
                clean.append(not estimate.mask[k].any())
        per_study.append(
            {
                "study": uid,
                "slices_with_a_mask": len(mine),
                "hand_drawn_ml": round(measure(truth3, z, spacing).volume_ml, 2),
                "bleed_map_ml": round(estimate.volume_ml, 2),
                "abc2_ml": round(estimate.abc2_ml, 2),
                "dice": _round(dice(estimate.mask, truth3)),
            }
        )
    scores = [float(b["dice"] or 0.0) for b in bloody]
    return {
        "threshold": threshold,
        "density": rule.to_dict(),
        "scope": "hand-drawn intraparenchymal and intraventricular blood (HemSeg-200 on RSNA)",
        "slices_with_blood": len(bloody),
        "dice_mean_per_slice": _round(float(np.mean(scores)) if scores else None),
        "dice_per_slice": [
            {**b, "dice": _round(b["dice"] if b["dice"] is not None else 0.0)} for b in bloody
        ],
        "slices_without_blood": len(clean),
        "share_of_empty_slices_left_clean": _round(float(np.mean(clean)) if clean else None),
        "brain_window_slices": png,
        "whole_studies": per_study,
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def phantom_report(
    predictor: Predictor,
    study: Study,
    volumes_ml: Sequence[float] = (5.0, 20.0, 60.0),
    seed: int = 0,
    map_threshold: float | None = None,
    map_density: DensityRule | None = None,
) -> list[dict[str, Any]]:
    """Hematomas of known volume painted into a real normal study (core.imaging.synthesis
    ``ellipsoid_bleed``), scored and outlined by the app's own engine: estimated against true
    volume. The painted series is scored as a new series (its pixels differ), never cached as
    the study's."""
    series = study.default_series
    z = np.array([s.z for s in series.slices])
    spacing = series.pixel_spacing or (1.0, 1.0)
    out = []
    for ml in volumes_ml:
        phantom = ellipsoid_bleed(series.hu, z, spacing, ml, seed)
        painted = dataclasses.replace(series, hu=np.round(phantom.hu).astype(series.hu.dtype))
        prediction = predictor.predict(painted, study_instance_uid=study.study_instance_uid)
        estimate = predictor.localise(
            painted, prediction, map_threshold=map_threshold, map_density=map_density
        )
        out.append(
            {
                "true_ml": round(phantom.volume_ml, 2),
                "estimated_ml": round(estimate.volume_ml, 2),
                "error": round(estimate.volume_ml / phantom.volume_ml - 1.0, 4),
                "dice": _round(dice(estimate.mask, phantom.mask)),
                "study_p_any": round(float(prediction.study_scores["any"]), 4),
            }
        )
    return out
