"""Helpers for the browser tests that read the page: the slice viewer component (its iframe),
the caption under it and the plotly charts."""

from __future__ import annotations

import base64
import io
import re
import time

import numpy as np
from PIL import Image
from playwright.sync_api import Frame, Locator, Page

STEP_TIMEOUT_MS = 60_000
COMPONENT = "dashboard.components.slice_viewer.slice_viewer"


def slice_caption(page: Page) -> Locator:
    """The caption under the slice viewer ('Slice k of N · z = … mm · W … L …')."""
    return (
        page.get_by_test_id("stMain")
        .get_by_test_id("stCaptionContainer")
        .filter(has_text=re.compile(r"^Slice \d+ of \d+ "))
    )


def plotly_chart(page: Page, title: str) -> Locator:
    """The main-area plotly chart whose title is exactly ``title``."""
    exact = re.compile(rf"^\s*{re.escape(title)}\s*$")
    return (
        page.get_by_test_id("stMain")
        .locator(".js-plotly-plot")
        .filter(has=page.locator(".gtitle", has_text=exact))
    )


def viewer_frame(page: Page) -> Frame:
    """The slice viewer's iframe (served by streamlit from dashboard/components/slice_viewer)."""
    deadline = time.monotonic() + STEP_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        for frame in page.frames:
            if f"/component/{COMPONENT}/" in frame.url:
                return frame
        page.wait_for_timeout(100)
    raise AssertionError(f"no {COMPONENT} frame on the page: {[f.url for f in page.frames]}")


def shown_slice(frame: Frame) -> int:
    return int(frame.locator("#stage").get_attribute("data-slice") or 0)


def current_image(frame: Frame) -> np.ndarray:
    """The decoded 8-bit slice the viewer draws now (its data URL, decoded here)."""
    src = frame.evaluate(
        "() => { const s = window.__sliceViewer; return s.shown.images[s.index - 1].src; }"
    )
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :]))))
