"""Every field of a model card checked against a sane range before anything is built from it.

Why: the card decides how big a tensor is allocated (``input_size``), how HU become the model's
input (``windows``), how logits become probabilities (``calibration``) and when a study is
flagged (``operating_thresholds``). An audit's card with ``input_size`` 20000 ended in a
traceback after trying to allocate gigabytes; a window of width 0 divides by zero; a temperature
of 0 or a threshold of 1.5 gives numbers that look like probabilities and are not. Such a card
is refused with one message naming every bad field, never a traceback, whatever flag is given
(core.model.integrity has the table of what is refused and what is merely unverified).

>>> problems({"format": CARD_FORMAT, "name": "m", "arch": "tiny", "input_size": 20000,
...           "windows": [], "labels": list(LABELS), "weights_files": []}, ("tiny",))[:2]
['input_size 20000 is not a whole number from 32 to 1024', 'windows must list 3 windows (got 0)']
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any, TypeGuard

from core.imaging.volume import DensityRule
from core.labels import LABELS
from core.model.bleed_map import MAP_STRIDE
from core.model.card import CARD_FORMAT

#: The model's square input, in pixels: a CT slice is 512 wide, the shipped model takes 160.
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 1024
#: A window's level and width in HU: CT spans about -1024 to 3071 (+ metal).
LEVEL_RANGE = (-2000.0, 5000.0)
MAX_WIDTH = 10000.0
#: Per-label temperature T of sigmoid(logit / T) (the same bounds as card_temperature).
TEMPERATURE_RANGE = (0.05, 20.0)
#: Longest free text shown to a reader (summary, notice).
MAX_TEXT = 4000
MAX_SHARDS = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _probability(value: object) -> bool:
    return _number(value) and 0.0 < value < 1.0


def _optional_mapping(card: Mapping[str, Any], key: str, out: list[str]) -> Mapping[str, Any]:
    value = card.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        out.append(f"{key} must be a table")
        return {}
    return value


def _windows(value: object, out: list[str]) -> None:
    if not isinstance(value, list | tuple) or len(value) != 3:
        count = len(value) if isinstance(value, list | tuple) else "none"
        out.append(f"windows must list 3 windows (got {count})")
        return
    for i, w in enumerate(value, 1):
        if not isinstance(w, Mapping):
            out.append(f"window {i} is not a table of name, level and width")
            continue
        name, level, width = w.get("name"), w.get("level", None), w.get("width", None)
        if not isinstance(name, str) or not 0 < len(name) <= 40:
            out.append(f"window {i} has no name")
        if not (_number(level) and LEVEL_RANGE[0] <= level <= LEVEL_RANGE[1]):
            out.append(f"window {i} level {level!r} is not a number of HU from -2000 to 5000")
        if not (_number(width) and 0 < width <= MAX_WIDTH):
            out.append(f"window {i} width {width!r} is not a number of HU above 0, up to 10000")


def _weights_files(value: object, out: list[str]) -> None:
    if not isinstance(value, list | tuple) or not 0 < len(value) <= MAX_SHARDS:
        out.append(f"weights_files must list 1 to {MAX_SHARDS} files")
        return
    for entry in value:
        file_name = entry.get("file") if isinstance(entry, Mapping) else None
        # Weights must sit beside their card: a name with a folder in it is not accepted.
        if not isinstance(file_name, str) or not _NAME.fullmatch(file_name):
            out.append(f"weights file {file_name!r} is not a plain file name beside the card")
            continue
        if not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
            out.append(f"weights file {file_name} has no valid sha256")
        size = entry.get("bytes")
        if size is not None and not (isinstance(size, int) and size > 0):
            out.append(f"weights file {file_name} has an impossible size {size!r}")


def _calibration(card: Mapping[str, Any], out: list[str]) -> None:
    calibration = _optional_mapping(card, "calibration", out)
    temperature = calibration.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, Mapping):
            out.append("calibration temperature must be a table by finding")
        else:
            low, high = TEMPERATURE_RANGE
            for label, value in temperature.items():
                if label not in LABELS:
                    out.append(f"calibration temperature names an unknown finding {label!r}")
                elif not (_number(value) and low <= value <= high):
                    out.append(
                        f"calibration temperature for {label} ({value!r}) is not a number from "
                        f"{low} to {high}"
                    )
    threshold = calibration.get("bleed_map_threshold")
    if threshold is not None and not _probability(threshold):
        out.append(f"calibration bleed_map_threshold {threshold!r} is not between 0 and 1")
    density = calibration.get("bleed_map_density")
    if density is not None and DensityRule.from_dict(density) is None:
        out.append(
            f"calibration bleed_map_density {density!r} is not floor_hu 30–80 with "
            "above_brain_hu 0–30"
        )


def _thresholds(card: Mapping[str, Any], out: list[str]) -> None:
    for key, value in _optional_mapping(card, "operating_thresholds", out).items():
        if key == "rule":
            if not isinstance(value, str):
                out.append("operating_thresholds rule must be text")
        elif not _probability(value):
            out.append(f"operating threshold {key} ({value!r}) is not between 0 and 1")


def _text(card: Mapping[str, Any], key: str, out: list[str]) -> None:
    value = card.get(key)
    if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
        out.append(f"{key} must be text of at most {MAX_TEXT} characters")


def problems(card: Mapping[str, Any], archs: Collection[str]) -> list[str]:
    """Every way ``card`` is out of range, in words ([] when it is fine). ``archs``: the
    architectures this version can build (core.model.checkpoint.BUILDERS)."""
    out: list[str] = []
    if card.get("format") != CARD_FORMAT:
        out.append(f"format {card.get('format')!r} is not {CARD_FORMAT!r}")
    if not isinstance(card.get("name"), str) or not _NAME.fullmatch(card["name"]):
        out.append("name must be letters, digits, '.', '_' or '-'")
    if card.get("arch") not in archs:
        out.append(f"arch {card.get('arch')!r} is not one of {', '.join(archs)}")
    size = card.get("input_size")
    if not (
        isinstance(size, int)
        and not isinstance(size, bool)
        and MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE
    ):
        out.append(
            f"input_size {size!r} is not a whole number from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}"
        )
    _windows(card.get("windows"), out)
    labels = card.get("labels")
    if not isinstance(labels, list | tuple) or tuple(labels) != LABELS:
        out.append(f"labels {labels!r} are not exactly {list(LABELS)}")
    bleed_map = card.get("bleed_map")
    if bleed_map is not None and bleed_map != {"stride": MAP_STRIDE}:
        out.append(f"bleed_map {bleed_map!r} is not {{'stride': {MAP_STRIDE}}}")
    _weights_files(card.get("weights_files"), out)
    weights = card.get("weights_sha256")
    if not isinstance(weights, str) or not _SHA256.fullmatch(weights):
        out.append("weights_sha256 is not a sha256")
    if card.get("weights_dtype") not in (None, "float16", "float32"):
        out.append(f"weights_dtype {card.get('weights_dtype')!r} is not float16 or float32")
    created = card.get("created")
    if created is not None:
        try:
            datetime.fromisoformat(str(created))
        except ValueError:
            out.append(f"created {created!r} is not a date")
    for key in ("summary", "notice", "command"):
        _text(card, key, out)
    _calibration(card, out)
    _thresholds(card, out)
    for key in ("context",):
        _optional_mapping(card, key, out)
    digest = card.get("content_sha256")
    if digest is not None and (not isinstance(digest, str) or not _SHA256.fullmatch(digest)):
        out.append("content_sha256 is not a sha256")
    return out
