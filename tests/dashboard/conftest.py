"""Fixtures for the dashboard tests: an isolated data folder per test, with the tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.runtime.secrets import Secrets
from streamlit.testing.v1.util import patch_config_options


@pytest.fixture(autouse=True)
def _no_secrets_of_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests set their own secrets (``at.secrets``): a .streamlit/secrets.toml with a login
    in the developer's checkout would otherwise put every test behind the login page."""
    empty = Secrets()
    empty._secrets = {}  # parsed already, and empty: no file is read
    monkeypatch.setattr(st, "secrets", empty)


@pytest.fixture(autouse=True)
def _served_on_loopback() -> Iterator[None]:
    """As .streamlit/config.toml ships it (127.0.0.1), whatever folder pytest runs from; a
    test that serves beyond loopback patches server.address again inside."""
    with patch_config_options({"server.address": "127.0.0.1"}):
        yield


@pytest.fixture
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_weights: Path) -> Path:
    """A fresh review database and the tiny model; returns the data folder. The tiny model is
    on no manifest, so it is loaded as an "unverified model" (ICH_ALLOW_UNVERIFIED=1)."""
    data = tmp_path / "data"
    monkeypatch.setenv("ICH_REVIEW_DATA", str(data))
    monkeypatch.setenv("ICH_WEIGHTS", str(tiny_weights))
    monkeypatch.setenv("ICH_ALLOW_UNVERIFIED", "1")
    monkeypatch.delenv("ICH_ALLOW_OPEN", raising=False)
    return data
