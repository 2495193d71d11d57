"""core.training.checkpointing: which settings a resumed run must keep."""

from __future__ import annotations

from core.training.checkpointing import RESUME_FIXED, changed_settings


def test_changed_settings_name_what_differs_and_accept_older_checkpoints() -> None:
    saved = {k: 1 for k in RESUME_FIXED if k not in ("bleed_map", "synthetic", "map_weight")}
    now = {**saved, "bleed_map": False, "synthetic": 0.0, "map_weight": 1.0}
    assert changed_settings(saved, now) == []  # written before these settings existed
    assert changed_settings(saved, {**now, "synthetic": 0.25}) == ["synthetic (was None, now 0.25)"]
    assert changed_settings({**now, "lr": 2}, now) == ["lr (was 2, now 1)"]
