"""The int8 model's real data: the slices NNCF calibrates on, and its accuracy figures on the
validation split.

Why in the training room: both read the rsna_png folder of brain-window PNGs with the
challenge's labels (``core.training.dataset``), and the calibration slices must come from the
training split, the figures from the validation split, of the split the model's card records.
The app itself never needs this data: ``python -m core.quantize`` runs it once and keeps the
int8 IR (core.inference.int8) in the app's data folder.

The calibration set, fixed and small:

* the rsna_png slices of the **training** split: the card's ``split`` when it is an id-hash
  split (the shipped card: sha256(image id) in the first 15% is validation, and so are the 115
  slices of ``hemseg/hemseg_masks.csv``), else that same split;
* ordered by sha256 of the image id (a fixed order that does not depend on the file listing);
* the first ``CALIBRATION_POSITIVE`` (64) with hemorrhage ('any') and the first
  ``CALIBRATION_NEGATIVE`` (64) without: 128 slices. Half of them bleeding, although 15% of the
  challenge's slices bleed, because the largest activations come from blood: activation ranges
  calibrated mostly on normal slices clip exactly what the model is for;
* read through the app's input path: ``read_png_hu`` (PNG grey → HU) and
  ``core.imaging.windowing.model_input`` at the model's size and windows.

Its identity is the sha256 of those model inputs (``calibration_digest``): other slices, other
pixels, another size or other windows give another int8 IR.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.imaging.windowing import model_input
from core.inference.int8 import quantize_ir, save_int8
from core.inference.openvino_backend import (
    CHECK_TOLERANCE,
    MAP_TOLERANCE,
    OpenVinoEngine,
    check_engine,
    compare,
    compile_engine,
    load_ir,
    probe_batch,
    torch_reference,
)
from core.labels import LABELS
from core.model.bleed_map import has_bleed_map
from core.model.checkpoint import LoadedModel, ModelSpec
from core.training.calibration import MIN_POSITIVES_FOR_OWN_TEMPERATURE
from core.training.dataset import read_challenge_labels, read_id_column, read_png_hu, split_by_hash
from core.training.metrics import roc_auc

log = logging.getLogger(__name__)

CALIBRATION_POSITIVE = 64
CALIBRATION_NEGATIVE = 64

#: The split when the card records no id-hash split: the shipped card's (15% by sha256 of the
#: image id, plus the hand-outlined slices).
DEFAULT_VAL_HASH = 0.15
DEFAULT_FORCED_VAL = "hemseg_masks.csv"

#: Largest change of a label's AUC (int8 against torch fp32, on the validation split) that the
#: int8 model may make: the accuracy guard's bound in tests/inference/test_openvino_backend.py.
MAX_DAUC = 0.005
#: A label's AUC change is held to MAX_DAUC only with this many positive validation slices:
#: with 2 (epidural in the shipped split) one swapped pair moves it by 0.001, and it is noise.
MIN_POSITIVES = MIN_POSITIVES_FOR_OWN_TEMPERATURE

#: Slices per forward pass while measuring.
BATCH = 16


@dataclass(frozen=True)
class PngSplit:
    """The rsna_png slices with labels, split as the card's model was trained."""

    folder: Path
    labels: dict[str, np.ndarray]
    train_ids: list[str]
    val_ids: list[str]
    description: str


def png_split(data: Path, card_split: Mapping[str, Any] | None = None) -> PngSplit:
    """The rsna_png folder under ``data`` (the shared data's root), split by the card's
    id-hash split (``val_hash`` and ``forced_val``), else by the shipped card's."""
    folder = data / "rsna_png" / "images"
    labels = read_challenge_labels(data / "rsna_png" / "rsna_png_stage_2_train.csv")
    names = sorted(p.stem for p in folder.glob("ID_*.png") if p.stem in labels)
    if not names:
        raise FileNotFoundError(f"no labelled rsna_png slices under {folder}")
    split = card_split if card_split and card_split.get("kind") == "id-hash" else {}
    fraction = float(split.get("val_hash") or DEFAULT_VAL_HASH)
    forced_name = split.get("forced_val", DEFAULT_FORCED_VAL) if split else DEFAULT_FORCED_VAL
    forced = read_id_column(data / "hemseg" / forced_name) if forced_name else []
    train, val = split_by_hash(names, fraction, forced)
    description = (
        f"rsna_png split by sha256(image id) < {fraction:g}"
        + (f" plus the ids of {forced_name}" if forced_name else "")
        + (" (the card's split)" if split else " (the shipped card's split)")
    )
    return PngSplit(folder, labels, [names[i] for i in train], [names[i] for i in val], description)


def _by_hash(ids: list[str]) -> list[str]:
    return sorted(ids, key=lambda i: hashlib.sha256(i.encode("utf-8")).hexdigest())


def calibration_ids(
    split: PngSplit, positive: int = CALIBRATION_POSITIVE, negative: int = CALIBRATION_NEGATIVE
) -> list[str]:
    """The calibration slices: training split only, by sha256 of the id, the first
    ``positive`` with hemorrhage and the first ``negative`` without."""
    ordered = _by_hash(split.train_ids)
    pos = [i for i in ordered if split.labels[i][0] > 0][:positive]
    neg = [i for i in ordered if split.labels[i][0] == 0][:negative]
    return pos + neg


def read_inputs(folder: Path, ids: list[str], spec: ModelSpec) -> np.ndarray:
    """Model inputs (n, 3, size, size), float32, through the app's input path."""
    return np.concatenate(
        [
            model_input(read_png_hu(folder / f"{i}.png")[None], spec.input_size, spec.windows)
            .numpy()
            .astype(np.float32)
            for i in ids
        ]
    )


def calibration_digest(x: np.ndarray) -> str:
    """sha256 of the calibration set's model inputs (shape and float32 values)."""
    h = hashlib.sha256(repr(tuple(x.shape)).encode("ascii"))
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return h.hexdigest()


def validation_figures(
    engine: OpenVinoEngine,
    model: torch.nn.Module,
    temperature: tuple[float, ...],
    x: np.ndarray,
    y: np.ndarray,
) -> dict[str, Any]:
    """``engine`` against the torch module in fp32 on labelled slices: the AUC of every label
    for both (None where a label has one class only), their largest difference, and the
    largest |Δp| of the calibrated probabilities and of the bleed map's cells."""
    ref_logits, ref_maps, logits, maps = [], [], [], []
    for lo in range(0, len(x), BATCH):
        batch = x[lo : lo + BATCH]
        rl, rm = torch_reference(model, torch.from_numpy(batch))
        el, em = engine.infer(batch)
        ref_logits.append(rl)
        logits.append(el)
        if rm is not None and em is not None:
            ref_maps.append(rm)
            maps.append(em)
    ref_l, got_l = np.concatenate(ref_logits), np.concatenate(logits)
    reference = (ref_l, np.concatenate(ref_maps) if ref_maps else None)
    max_dp, max_dmap = compare(
        got_l, np.concatenate(maps) if maps else None, reference, temperature
    )
    t = np.asarray(temperature, dtype=np.float64)
    p_ref = 1.0 / (1.0 + np.exp(-ref_l / t))
    p_got = 1.0 / (1.0 + np.exp(-got_l / t))
    auc_ref = {label: roc_auc(y[:, j], p_ref[:, j]) for j, label in enumerate(LABELS)}
    auc_got = {label: roc_auc(y[:, j], p_got[:, j]) for j, label in enumerate(LABELS)}
    daucs = [
        abs(a - b)
        for a, b in zip(auc_ref.values(), auc_got.values(), strict=True)
        if a is not None and b is not None
    ]
    guarded = [
        label
        for j, label in enumerate(LABELS)
        if y[:, j].sum() >= MIN_POSITIVES and auc_ref[label] is not None
    ]
    return {
        "slices": len(x),
        "positives": {label: int(y[:, j].sum()) for j, label in enumerate(LABELS)},
        "auc_torch_fp32": auc_ref,
        "auc_int8": auc_got,
        "max_dauc": max(daucs) if daucs else None,
        "max_dauc_guarded": max(
            (abs(auc_ref[k] - auc_got[k]) for k in guarded),  # type: ignore[operator]
            default=None,
        ),
        "guarded_labels": guarded,
        "max_dp": max_dp,
        "max_dmap": max_dmap,
    }


@dataclass
class Int8Build:
    """What ``build_int8`` made: the quantized model (in memory, kept or not), its record (the
    calibration set, the load check, the validation figures, the verdict) and, when it passed
    the guard, the folder it was saved in."""

    quantized: Any
    record: dict[str, Any]
    passed: bool
    reasons: list[str] = field(default_factory=list)
    folder: Path | None = None


def build_int8(
    loaded: LoadedModel,
    data: Path,
    tolerance: float = CHECK_TOLERANCE,
    max_dauc: float = MAX_DAUC,
    save: bool = True,
    keep_refused: bool = False,
) -> Int8Build:
    """Quantize ``loaded``'s model on the calibration set under ``data`` (the shared data's
    root), hold it to the accuracy guard, and keep it in the app's data folder when it passes.

    The guard, all against torch fp32: the load check on the probe phantom (what every start
    repeats) and, on the validation split's slices, the largest |Δp| of the calibrated
    probabilities within ``tolerance`` and of the bleed map within MAP_TOLERANCE, and the AUC
    of every label with at least MIN_POSITIVES positives within ``max_dauc``. Refused: nothing
    is saved (with ``keep_refused``, it is, marked refused, for measuring: the engine never
    offers it), and the engine goes on with what it used before.
    """
    model, spec = loaded.model, loaded.spec
    split = png_split(data, loaded.card.split)
    ids = calibration_ids(split)
    x_cal = read_inputs(split.folder, ids, spec)
    digest = calibration_digest(x_cal)
    ir, _ = load_ir(loaded, model)
    start = time.perf_counter()
    quantized = quantize_ir(ir, x_cal)
    quantize_s = time.perf_counter() - start
    engine = compile_engine(quantized, "int8", has_bleed_map(model))
    check = check_engine(engine, model, loaded.temperature, probe_batch(spec), tolerance)
    x_val = read_inputs(split.folder, split.val_ids, spec)
    y_val = np.stack([split.labels[i] for i in split.val_ids]).astype(np.int8)
    figures = validation_figures(engine, model, loaded.temperature, x_val, y_val)
    reasons = []
    if not check.passed:
        reasons.append(
            f"load check: |Δp| {check.max_dp:.3g}, bleed map {check.max_dmap:.3g} "
            f"(tolerance {tolerance:g} / {MAP_TOLERANCE:g})"
        )
    if figures["max_dp"] > tolerance:
        reasons.append(f"validation: max |Δp| {figures['max_dp']:.3g} > {tolerance:g}")
    if figures["max_dmap"] > MAP_TOLERANCE:
        reasons.append(
            f"validation: bleed map max |Δp| {figures['max_dmap']:.3g} > {MAP_TOLERANCE:g}"
        )
    worst = figures["max_dauc_guarded"]
    if worst is not None and worst > max_dauc:
        reasons.append(f"validation: an AUC moved by {worst:.3g} > {max_dauc:g}")
    record = {
        "calibration": {
            "slices": len(ids),
            "positive_any": sum(int(split.labels[i][0] > 0) for i in ids),
            "source": "rsna_png training split, by sha256(image id): the first "
            f"{CALIBRATION_POSITIVE} with hemorrhage and {CALIBRATION_NEGATIVE} without",
            "split": split.description,
            "ids_sha256": hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest(),
            "quantize_seconds": round(quantize_s, 1),
        },
        "load_check": {"max_dp": check.max_dp, "max_dmap": check.max_dmap},
        "validation": {"split": split.description, **figures},
        "guard": {
            "tolerance": tolerance,
            "map_tolerance": MAP_TOLERANCE,
            "max_dauc": max_dauc,
            "min_positives": MIN_POSITIVES,
        },
        "passed": not reasons,
        "refused_because": reasons,
    }
    build = Int8Build(quantized, record, not reasons, reasons)
    if reasons:
        log.warning("int8 refused: %s", "; ".join(reasons))
    if save and (build.passed or keep_refused):
        build.folder = save_int8(loaded, quantized, digest, record)
    return build


__all__ = [
    "Int8Build",
    "build_int8",
    "CALIBRATION_NEGATIVE",
    "CALIBRATION_POSITIVE",
    "MAX_DAUC",
    "PngSplit",
    "calibration_digest",
    "calibration_ids",
    "png_split",
    "read_inputs",
    "validation_figures",
]
