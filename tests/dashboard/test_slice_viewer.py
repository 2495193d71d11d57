"""The slice viewer component in the page, through AppTest (no browser: what the page sends the
component, and what it does with the component's reports). The browser side is in
tests/browser/test_slice_viewer_in_chromium.py."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest
from viewer_component import SENT, viewer_args, viewer_images

from core.dicom.study import load_studies
from core.imaging.orientation import edge_markers
from core.imaging.windowing import PRESETS, apply_window

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
TIMEOUT = 180


def _opened(small_zip: Path) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.sidebar.file_uploader[0].set_value(
        (small_zip.name, small_zip.read_bytes(), "application/zip")
    ).run()
    assert not at.exception, at.exception
    return at


def _args(at: AppTest) -> dict:
    return viewer_args(at)


def _images(at: AppTest) -> list[str]:
    return viewer_images(at)[1]


def _decode(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix), url[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :]))))


def _caption(at: AppTest) -> str:
    return next(c.value for c in at.main.caption if c.value.startswith("Slice "))


def test_viewer_gets_every_slice_windowed_with_markers_and_scale(
    small_zip: Path, app_env: Path
) -> None:
    """The component renders without exception, with all slices (lossless, at the window the
    page shows), the edge letters of this series' orientation and its pixel spacing."""
    study = load_studies(small_zip)[0]
    series = study.default_series
    at = _opened(small_zip)
    args = _args(at)
    assert args["n"] == len(_images(at)) == series.n_slices
    assert (args["rows"], args["cols"]) == series.hu.shape[1:]
    k = args["index"]
    assert _caption(at).startswith(f"Slice {k} of {series.n_slices} ")
    shown = _decode(_images(at)[k - 1])
    assert np.array_equal(shown, apply_window(series.hu[k - 1], args["level"], args["width"]))
    markers = edge_markers(series.orientation)
    assert markers is not None and args["markers"]["left"] == markers.left == "R"
    assert args["markers"]["right"] == "L"
    assert args["pixel_spacing"] == list(series.pixel_spacing)
    assert [p["hotkey"] + p["name"] for p in args["presets"]] == [
        f"{i + 1}{name}" for i, name in enumerate(PRESETS)
    ]


def test_fallback_slider_moves_the_viewer_and_its_reports_move_the_page(
    small_zip: Path, app_env: Path
) -> None:
    """The slider (the keyboard-accessible path) and the component share one slice key; a
    report from the component (the reader scrolled, pressed a preset hotkey, dragged the
    window) moves the slider, the caption and the probabilities, once per report."""
    uid = load_studies(small_zip)[0].study_instance_uid
    at = _opened(small_zip)
    at.slider(key=f"slice-{uid}").set_value(3).run()
    assert _args(at)["index"] == 3 and _caption(at).startswith("Slice 3 of")

    at.session_state[f"viewer-{uid}"] = {
        "seq": "t-1",
        "event": "slice",
        "slice": 7,
        "level": 40,
        "width": 80,
        "preset": "brain",
    }
    at.run()
    assert not at.exception, at.exception
    assert at.slider(key=f"slice-{uid}").value == 7
    assert _args(at)["index"] == 7 and _args(at)["applied_seq"] == "t-1"
    bars = next(c for c in at.main.get("plotly_chart") if "Probabilities" in str(c.proto.spec))
    assert json.loads(bars.proto.spec)["data"][0]["name"] == "slice 7"  # the bars follow

    # The same report again (a component repeats its value on every rerun) changes nothing:
    # the slider moved since, and stays where the reader put it.
    at.slider(key=f"slice-{uid}").set_value(2).run()
    assert _args(at)["index"] == 2

    at.session_state[f"viewer-{uid}"] = {
        "seq": "t-2",
        "event": "preset",
        "slice": 2,
        "level": 600,
        "width": 2800,
        "preset": "bone",
    }
    at.run()
    assert at.selectbox(key="preset").value == "bone"
    assert (_args(at)["level"], _args(at)["width"]) == (600, 2800)
    assert "W 2800 L 600" in _caption(at)

    at.session_state[f"viewer-{uid}"] = {
        "seq": "t-3",
        "event": "window",
        "slice": 2,
        "level": 450,
        "width": 1500,
        "preset": None,
    }
    at.run()
    assert (at.slider(key="level-bone").value, at.slider(key="width-bone").value) == (450, 1500)
    assert "W 1500 L 450" in _caption(at)
    assert not at.main.warning, [w.value for w in at.main.warning]  # no session-state clash


def test_images_go_once_per_window_and_again_when_the_frame_asks(
    small_zip: Path, app_env: Path
) -> None:
    """A rerun (each settled scroll is one) sends the images' key, not every slice again; a
    new window sends the new set; a frame mounted again asks ("resend") and gets it."""
    uid = load_studies(small_zip)[0].study_instance_uid
    at = _opened(small_zip)
    first, _ = viewer_images(at)
    at.slider(key=f"slice-{uid}").set_value(3).run()
    again = _args(at)
    assert again["images"] is None and again["images_key"] == first["images_key"]
    assert again["index"] == 3 and again["n"] == len(SENT[first["images_key"]])

    report = {"seq": "r-1", "event": "resend", "slice": 3, "level": 40, "width": 80}
    at.session_state[f"viewer-{uid}"] = {**report, "preset": "brain"}
    at.run()
    resent = _args(at)
    assert resent["images"] == SENT[first["images_key"]] and resent["index"] == 3
    at.run()
    assert _args(at)["images"] is None  # once again

    at.selectbox(key="preset").set_value("bone").run()
    bone = _args(at)
    assert bone["images_key"] != first["images_key"] and bone["images"] is not None
