"""Process-wide resources, created once and shared by every user: the model, the store and
the installation's pseudonyms.

Each is cached by its location, so pointing ``ICH_WEIGHTS`` / ``ICH_REVIEW_DATA`` elsewhere
gives another resource instead of a stale one.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.dicom.study import Series
from core.errors import ICHError
from core.imaging.png import png_bytes
from core.imaging.volume import BleedEstimate, outline_layer
from core.imaging.windowing import apply_window
from core.inference.predictor import Predictor
from core.model.checkpoint import default_weights_dir
from core.model.gradcam import Heatmap
from core.model.integrity import allow_unverified_from_env
from core.pacs.watch_state import STATE_NAME, WatchState
from core.review.pseudonym import Pseudonymizer, for_installation
from core.review.store import DB_NAME, ReviewStore, data_dir
from dashboard.components.slice_viewer import data_url


def weights_dir() -> Path:
    """``$ICH_WEIGHTS`` (a folder of model cards and weights) or the project's weights/, as
    for the command-line tools."""
    return default_weights_dir()


def allow_unverified() -> bool:
    """``ICH_ALLOW_UNVERIFIED=1``: load a model not on the manifest (core.model.integrity)."""
    return allow_unverified_from_env()


@st.cache_resource(show_spinner="Loading the model…")
def predictor(folder: Path, unverified_ok: bool = False) -> tuple[Predictor | None, str]:
    """The installed model, or None with the reason shown in the model panel. An unverified
    model only with ``unverified_ok`` (and the panel then says so)."""
    try:
        return Predictor.from_default(weights_dir=folder, allow_unverified=unverified_ok), ""
    except ICHError as exc:
        return None, str(exc)


@st.cache_resource
def review_store(folder: Path) -> ReviewStore:
    return ReviewStore(folder / DB_NAME)


def current_store() -> ReviewStore:
    return review_store(data_dir())


@st.cache_resource
def watch_state(folder: Path) -> WatchState:
    """What the PACS watcher (python -m core.watch) did, read from the same data folder."""
    return WatchState(folder / STATE_NAME)


def current_watch_state() -> WatchState:
    return watch_state(data_dir())


@st.cache_resource
def pseudonyms(folder: Path) -> Pseudonymizer:
    return for_installation(folder)


def current_pseudonyms() -> Pseudonymizer:
    """The same pseudonyms as the command-line tools: the key in the same data folder."""
    return pseudonyms(data_dir())


@st.cache_resource(max_entries=256, show_spinner="Computing the heatmap…")
def heatmap(
    _predictor: Predictor, weights: str, _series: Series, pixel_hash: str, index: int, label: str
) -> Heatmap:
    """Grad-CAM for the slice on screen, computed once per (weights, pixels, slice, label);
    the arguments with a leading underscore are not hashed, the ones after them are the key."""
    return _predictor.explain(_series, index, label)


@st.cache_resource(max_entries=32, show_spinner="Estimating the bleed's extent…")
def bleed_estimate(
    _predictor: Predictor,
    weights: str,
    _series: Series,
    _prediction: object,
    pixel_hash: str,
    threshold: float | None = None,
    map_threshold: float | None = None,
) -> BleedEstimate:
    """Mask and volume of one series, once per (weights, pixels, thresholds): from the bleed
    map at ``map_threshold`` (default the card's), or for a model without one the fallback
    rule on the slices flagged at ``threshold``."""
    return _predictor.localise(
        _series,
        _prediction,  # type: ignore[arg-type]
        threshold=threshold,
        map_threshold=map_threshold,
    )


@st.cache_resource(max_entries=8, show_spinner="Preparing the slices…")
def slice_urls(_series: Series, pixel_hash: str, level: int, width: int) -> tuple[str, ...]:
    """Every slice of a series windowed at (level, width), as PNG data URLs for the viewer:
    encoded once per (pixels, window), so a rerun that keeps the window costs nothing."""
    grey = apply_window(_series.hu, level, width)
    return tuple(data_url(png_bytes(g)) for g in grey)


@st.cache_resource(max_entries=8, show_spinner=False)
def outline_urls(
    _bleed: BleedEstimate,
    weights: str,
    pixel_hash: str,
    threshold: float | None,
    map_threshold: float | None,
) -> tuple[str | None, ...]:
    """The bleed outline of every slice as a transparent PNG data URL (None where a slice has
    none), keyed like :func:`bleed_estimate`."""
    return tuple(data_url(png_bytes(outline_layer(m))) if m.any() else None for m in _bleed.mask)
