"""The model card as one typed, frozen value: what every reader of ``<name>.json`` uses.

Why a dataclass over the plain dict: the card's keys were read by string in four modules, each
with its own default for a missing key. Here each key the code relies on is a typed field;
keys this version does not know (a later trainer's, a person's note) are kept in ``extra``, and
the order of the keys as read is remembered, so that ``ModelCard.from_json(text).to_json()``
gives back the same bytes (the card's sha256 does not change by being read and rewritten).

>>> card = ModelCard.from_dict({"format": CARD_FORMAT, "name": "m", "arch": "tiny",
...                             "input_size": 64, "note": "kept"})
>>> card.name, card.input_size, dict(card.extra)
('m', 64, {'note': 'kept'})
>>> ModelCard.from_json(card.to_json()) == card
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

#: Version of the card layout, so a future change can still read old cards.
CARD_FORMAT = "ich-review-model-card/1"

#: Card keys written by save_checkpoint; a caller's ``card`` may not override them.
RESERVED_CARD_KEYS: frozenset[str] = frozenset(
    {
        "format",
        "name",
        "arch",
        "input_size",
        "windows",
        "labels",
        "weights_files",
        "weights_sha256",
        "created",
        "notice",
        "context",
        "weights_dtype",
        "bleed_map",
        "content_sha256",
    }
)


@dataclass(frozen=True)
class ModelCard:
    """A model card (``<name>.json`` beside the weights). Fields that a card may lack are None;
    ``key_order`` (the keys as read) decides what ``to_dict`` writes and in which order."""

    format: str = CARD_FORMAT
    name: str = ""
    arch: str = ""
    input_size: int = 0
    #: The model's input windows, in channel order: ``{"name", "level", "width"}`` each.
    windows: tuple[Mapping[str, Any], ...] = ()
    labels: tuple[str, ...] = ()
    #: ``{"file", "sha256", "bytes"}`` per safetensors shard, in loading order.
    weights_files: tuple[Mapping[str, Any], ...] = ()
    weights_sha256: str = ""
    created: str | None = None
    notice: str | None = None
    training_data: Mapping[str, Any] | None = None
    split: Mapping[str, Any] | None = None
    command: str | None = None
    #: ``{"<data measured on>": {"<metric>": value}}`` or a list of ``measured_on``/``values``.
    metrics: Mapping[str, Any] | list[Any] | None = None
    training: Mapping[str, Any] | None = None
    summary: str | None = None
    #: ``{"study_any": p, "slice_any": p}``: chosen by core.crossval on out-of-fold outputs.
    operating_thresholds: Mapping[str, float] | None = None
    #: The slice-context model stored with the CNN (its ContextSpec and how it was trained).
    context: Mapping[str, Any] | None = None
    #: ``{"temperature": {label: T}, ...}``: written by core.calibrate, applied by the engine.
    calibration: Mapping[str, Any] | None = None
    #: How the weights files store floating tensors ("float16"; absent: float32).
    weights_dtype: str | None = None
    #: ``{"stride": 4}`` when the network has the segmentation head (core.model.bleed_map).
    bleed_map: Mapping[str, Any] | None = None
    #: The recipes measured against this one (issue 10's table): a row each, with what varied
    #: (data, input size, epochs, synthetic share, head) and its figures; None when not recorded.
    recipes_tried: tuple[Mapping[str, Any], ...] | None = None
    #: How and when the recipes' figures were measured.
    recipes_note: str | None = None
    #: sha256 over every other key of the card (core.model.integrity): binds the card's
    #: content to the weights entries it lists; the manifest says which digests were shipped.
    content_sha256: str | None = None
    #: Keys this version does not know, kept as read.
    extra: Mapping[str, Any] = field(default_factory=dict)
    key_order: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """The card from its JSON object (already checked by load_checkpoint where it matters:
        here nothing is validated, values are only put in their fields)."""
        known = {f.name for f in fields(cls)} - {"extra", "key_order"}
        values: dict[str, Any] = {}
        for key in known & data.keys():
            value = data[key]
            if key in ("windows", "labels", "weights_files", "recipes_tried") and isinstance(
                value, list
            ):
                value = tuple(value)
            values[key] = value
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**values, extra=extra, key_order=tuple(data))

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a model card is a JSON object")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: the keys as read, in their order; for a card made in code, every
        field that is set, then ``extra``."""
        order = self.key_order or tuple(
            [
                f.name
                for f in fields(self)
                if f.name not in ("extra", "key_order") and getattr(self, f.name) is not None
            ]
            + list(self.extra)
        )
        out: dict[str, Any] = {}
        for key in order:
            value = self.extra[key] if key in self.extra else getattr(self, key)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def to_json(self) -> str:
        """As save_checkpoint writes it: two-space indent, UTF-8 text, one final newline."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def threshold(self, key: str) -> float | None:
        """An operating threshold (``study_any``, ``slice_any``) when the card has one."""
        return (self.operating_thresholds or {}).get(key)
