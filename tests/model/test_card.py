"""core.model.card: the shipped card reads into typed fields and writes back byte for byte."""

from __future__ import annotations

import hashlib
from pathlib import Path

from core.model.card import ModelCard
from core.model.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "weights" / "ich-resnext101-32x4d-v4.json"


def test_shipped_cards_round_trip_byte_identically() -> None:
    for path in sorted(SHIPPED.parent.glob("*.json")):
        if path.name.endswith("-crossval.json"):
            continue
        raw = path.read_bytes()
        again = ModelCard.from_json(raw.decode("utf-8")).to_json().encode("utf-8")
        assert hashlib.sha256(again).hexdigest() == hashlib.sha256(raw).hexdigest(), path.name
    card = ModelCard.from_json(SHIPPED.read_text(encoding="utf-8"))
    assert card.arch == "resnext101_32x4d" and card.input_size == 160
    assert card.labels[0] == "any" and len(card.weights_files) == 1
    assert card.weights_dtype == "float16" and card.calibration is not None
    assert card.split is not None and card.split["kind"] == "id-hash"
    assert card.threshold("study_any") is not None and card.summary
    assert card.bleed_map == {"stride": 4} and card.calibration["bleed_map_threshold"]
    assert not card.extra  # every key of the shipped card has its typed field


def test_unknown_keys_are_kept_in_extra_and_in_place() -> None:
    text = '{\n  "name": "m",\n  "later_key": [\n    1,\n    2\n  ],\n  "arch": "tiny"\n}\n'
    card = ModelCard.from_json(text)
    assert dict(card.extra) == {"later_key": [1, 2]}
    assert card.to_json() == text


def test_load_checkpoint_gives_the_typed_card(tiny_weights: Path) -> None:
    loaded = load_checkpoint(tiny_weights, allow_unverified=True)
    assert isinstance(loaded.card, ModelCard)
    assert loaded.card.to_json() == loaded.card_path.read_text(encoding="utf-8")
