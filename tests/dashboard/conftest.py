"""Fixtures for the dashboard tests: an isolated data folder per test, with the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_weights: Path) -> Path:
    """A fresh review database and the tiny model; returns the data folder."""
    data = tmp_path / "data"
    monkeypatch.setenv("ICH_REVIEW_DATA", str(data))
    monkeypatch.setenv("ICH_WEIGHTS", str(tiny_weights))
    return data
