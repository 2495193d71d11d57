"""Fixtures for the dashboard tests: an untrained tiny model (test fixture only) and an
isolated data folder per test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.model import ModelSpec, build_model, save_checkpoint


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained checkpoint: exercises the app's model path, says nothing about ICH."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    spec = ModelSpec("tiny", 64)
    model = build_model(spec)
    model.train()
    with torch.no_grad():  # one pass in train mode gives BatchNorm non-trivial statistics
        model(torch.rand(4, 3, 64, 64))
    save_checkpoint(model.eval(), spec, folder, "tiny-test", {"training_data": "none (test)"})
    return folder


@pytest.fixture
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_weights: Path) -> Path:
    """A fresh review database and the tiny model; returns the data folder."""
    data = tmp_path / "data"
    monkeypatch.setenv("ICH_REVIEW_DATA", str(data))
    monkeypatch.setenv("ICH_WEIGHTS", str(tiny_weights))
    return data
