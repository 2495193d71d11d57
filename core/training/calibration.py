"""Calibration of a trained classifier and the figures its card shows: per-label temperature
fitted on held-out logits, the headline figures of an evaluation, where the false positives lie,
and the card's summary in words. The door ``python -m core.calibrate`` runs them on the
installed files."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import expit

from core.imaging.windowing import model_input
from core.inference.predictor import Predictor
from core.labels import LABELS
from core.training.dataset import read_png_hu

#: Labels with fewer validation positives than this share one temperature (fitted on all).
MIN_POSITIVES_FOR_OWN_TEMPERATURE = 10
T_BOUNDS = (0.05, 20.0)


# --------------------------------------------------------------------------- scoring


def raw_logits(predictor: Predictor, x: torch.Tensor) -> np.ndarray:
    """The network's logits (n, 6) for a model-ready batch: before any temperature."""
    x = x.to(predictor.device).contiguous(memory_format=torch.channels_last)
    with predictor.lock, torch.inference_mode():
        return predictor.model(x).float().cpu().numpy()


def png_logits(
    predictor: Predictor, folder: Path, ids: Sequence[str], batch: int = 32
) -> np.ndarray:
    """Logits of brain-window PNGs through the app's input path (HU at full size, then
    ``model_input``: clip, resize, window), ``batch`` at a time."""
    spec = predictor.spec
    out: list[np.ndarray] = []
    for lo in range(0, len(ids), batch):
        x = torch.cat(
            [
                model_input(read_png_hu(folder / f"{i}.png")[None], spec.input_size, spec.windows)
                for i in ids[lo : lo + batch]
            ]
        )
        out.append(raw_logits(predictor, x))
    return np.concatenate(out) if out else np.zeros((0, len(LABELS)), np.float32)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function in float64 (scipy's, stable for large |z|)."""
    return expit(np.asarray(z, dtype=np.float64))


# --------------------------------------------------------------------------- temperature


def _bce(y: np.ndarray, z: np.ndarray, t: float) -> float:
    p = np.clip(sigmoid(z / t), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit_temperature(y: np.ndarray, z: np.ndarray) -> float:
    """The T in ``T_BOUNDS`` minimising the log loss of sigmoid(z / T) on labels ``y``.

    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(0, 3, 4000)
    >>> y = (rng.random(4000) < sigmoid(z / 2.5)).astype(float)
    >>> abs(fit_temperature(y, z) - 2.5) < 0.3
    True
    """
    lo, hi = (math.log(b) for b in T_BOUNDS)
    found = minimize_scalar(lambda s: _bce(y, z, math.exp(s)), bounds=(lo, hi), method="bounded")
    return float(math.exp(found.x))


def fit_temperatures(y: np.ndarray, z: np.ndarray) -> dict[str, float]:
    """One temperature per label; labels with few positives take the one fitted on all."""
    shared = fit_temperature(y.ravel(), z.ravel())
    return {
        label: round(
            fit_temperature(y[:, j], z[:, j])
            if y[:, j].sum() >= MIN_POSITIVES_FOR_OWN_TEMPERATURE
            else shared,
            4,
        )
        for j, label in enumerate(LABELS)
    }


# --------------------------------------------------------------------------- figures


def _r(value: object, digits: int = 4) -> object:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, list | tuple):
        return [_r(v, digits) for v in value]
    return value


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The figures a card shows from one ``core.evaluate.evaluate`` result."""
    model, base = result["model"], result["baseline"]
    op = model["operating_point_any"]
    out: dict[str, Any] = {
        "slices": result["n_slices"],
        "studies": result["n_studies"],
        "slice_auc": {k: _r(v["auc"]) for k, v in model["labels"].items()},
        "slice_auc_ci95": {k: _r(v["auc_ci95"]) for k, v in model["labels"].items()},
        "positive_slices": {k: v["positive_slices"] for k, v in model["labels"].items()},
        "weighted_log_loss": _r(model["weighted_log_loss"]),
        "weighted_log_loss_ci95": _r(model["weighted_log_loss_ci95"]),
        "constant_prior_weighted_log_loss": _r(base["weighted_log_loss"]),
        "ece_any": _r(model["reliability_any"]["ece"]),
    }
    if result["n_studies"] < result["n_slices"]:  # whole studies, not single slices
        out["study_auc_any"] = _r(model["study_any"]["auc"])
        out["study_auc_any_ci95"] = _r(model["study_any"]["auc_ci95"])
        out["positive_studies"] = model["study_any"]["positive_studies"]
        out["study_aggregation"] = model["study_any"]["aggregation"]
    if isinstance(op.get("threshold"), float):
        out["threshold_any"] = _r(op["threshold"])
        for level in ("slice", "study") if "study_auc_any" in out else ("slice",):
            point = op[level]
            out[f"{level}_sensitivity"] = _r(point.get("sensitivity"))
            out[f"{level}_specificity"] = _r(point.get("specificity"))
    return out


def summary_sentence(
    card: dict[str, Any], val: dict[str, Any], studies: dict[str, Any] | None
) -> str:
    """The card's verdict in words, with its numbers (the sidebar shows it)."""
    data = card.get("training_data", {})
    train_slices = (card.get("split") or {}).get("train_slices", data.get("slices", "?"))

    def ci(name: str, block: dict[str, Any], label: str = "any") -> str:
        value = block["slice_auc"][label] if name == "slice" else block["study_auc_any"]
        low_high = (
            block["slice_auc_ci95"][label] if name == "slice" else block["study_auc_any_ci95"]
        )
        if not isinstance(value, float):
            return "not measurable"
        if isinstance(low_high, list) and len(low_high) == 2:
            return f"{value:.2f} (95 % CI {low_high[0]:.2f}–{low_high[1]:.2f})"
        return f"{value:.2f}"

    subtypes = ", ".join(
        f"{label} {val['slice_auc'][label]:.2f}"
        for label in LABELS[1:]
        if isinstance(val["slice_auc"][label], float)
    )
    init = str((card.get("training") or {}).get("init") or "random")
    start = (
        "trained from scratch (no pretrained weights)"
        if init.startswith("random")
        else f"trained from the weights of {init.split(' ')[0].removesuffix('.safetensors')}"
    )
    text = (
        f"{card.get('arch')} at {card.get('input_size')} px, {start} "
        f"on {train_slices} real RSNA brain-window slices. On {val['slices']} "
        "held-out slices: slice AUC(any) "
        f"{ci('slice', val)}; by subtype {subtypes}; weighted log loss "
        f"{val['weighted_log_loss']:.3f} against {val['constant_prior_weighted_log_loss']:.3f} "
        "for a constant guess."
    )
    if studies is not None:
        text += (
            f" On {studies['studies']} whole CT studies it never saw ({studies['slices']} slices, "
            f"{studies['positive_studies']} with bleeding): slice AUC(any) {ci('slice', studies)}, "
            f"study AUC(any) {ci('study', studies)}"
        )
        if "study_sensitivity" in studies:
            text += (
                f"; at the operating threshold {studies['threshold_any']:.2f} it flags "
                f"{studies['study_sensitivity']:.0%} of bleeding studies and clears "
                f"{studies['study_specificity']:.0%} of normal ones"
            )
        text += "."
    text += (
        " A triage aid for research: it misses bleeds and flags normal scans, and every finding "
        "must be confirmed by a radiologist."
    )
    return text
