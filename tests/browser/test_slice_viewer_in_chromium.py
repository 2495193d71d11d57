"""The slice viewer component in real Chromium: the wheel and the arrow keys scroll the stack in
the browser and the page's probabilities follow; a preset hotkey and a right-drag change the
window and the page re-windows the slices; the orientation letters, the scale bar and the
corner text are drawn on the image. Timings are printed (run with -s), never asserted: the
machine is shared."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Frame, Page, expect
from viewer_page import current_image, plotly_chart, shown_slice, slice_caption, viewer_frame

from core.dicom.study import load_studies
from core.imaging.orientation import edge_markers
from core.imaging.png import png_bytes
from core.imaging.windowing import PRESETS, apply_window
from dashboard.components.slice_viewer import data_url

FIRST_PREDICTION_TIMEOUT_MS = 120_000  # reading + first model run on 2 busy CPU cores
STEP_TIMEOUT_MS = 60_000
WHEEL_SAMPLES = 20


def _wait_settled(page: Page, frame: Frame, k: int, n: int) -> None:
    """The page has caught up with slice k: caption, slider and bar chart name it."""
    expect(slice_caption(page)).to_contain_text(f"Slice {k} of {n} ")
    expect(page.get_by_test_id("stMain").get_by_role("slider").first).to_have_value(str(k))
    # (while the page reruns, streamlit may keep the old chart beside the new one a moment)
    bars = plotly_chart(page, "Probabilities")
    expect(bars.filter(has_text=f"slice {k}").first).to_be_visible()
    expect(bars).to_have_count(1)
    assert shown_slice(frame) == k


@pytest.mark.slow
def test_wheel_keys_presets_and_markers_in_chromium(
    streamlit_server, browser_page, small_zip: Path, output_dir: Path
) -> None:
    page: Page = browser_page.page
    page.set_default_timeout(STEP_TIMEOUT_MS)
    expect.set_options(timeout=STEP_TIMEOUT_MS)
    (study,) = load_studies(small_zip)
    series = study.default_series
    n = series.n_slices
    timings: dict[str, str] = {}

    received: list[int] = []  # sizes of the websocket messages the page got from the server
    page.on("websocket", lambda ws: ws.on("framereceived", lambda m: received.append(len(m))))
    page.goto(streamlit_server.url, wait_until="domcontentloaded")
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_role("heading", name="ICH review")).to_be_visible()
    timings["title drawn after server start (before the imports and the model)"] = (
        f"{time.monotonic() - streamlit_server.started_at:.1f} s"
    )
    expect(sidebar.get_by_test_id("stFileUploader")).to_be_visible()
    timings["first page drawn after server start"] = (
        f"{time.monotonic() - streamlit_server.started_at:.1f} s"
    )

    t0 = time.monotonic()
    sidebar.get_by_test_id("stFileUploader").locator("input[type=file]").set_input_files(
        str(small_zip)
    )
    frame = viewer_frame(page)
    frame.wait_for_function(
        "() => document.getElementById('stage').dataset.slice", timeout=FIRST_PREDICTION_TIMEOUT_MS
    )
    timings["upload → first slice drawn"] = f"{time.monotonic() - t0:.1f} s"
    bars = plotly_chart(page, "Probabilities")
    expect(bars.first).to_be_visible(timeout=FIRST_PREDICTION_TIMEOUT_MS)
    timings["upload → probabilities shown"] = f"{time.monotonic() - t0:.1f} s"
    page.wait_for_timeout(500)  # the move to the peak slice, once scored
    k = shown_slice(frame)
    _wait_settled(page, frame, k, n)
    assert np.array_equal(current_image(frame), apply_window(series.hu[k - 1], 40, 80))

    # Orientation letters (radiological convention for this axial series), scale bar, corners.
    markers = edge_markers(series.orientation)
    assert markers is not None
    for edge in ("top", "bottom", "left", "right"):
        expect(frame.locator(f"#mk-{edge}")).to_have_text(getattr(markers, edge))
    assert (markers.left, markers.right) == ("R", "L") and markers.top.startswith("A")
    scale = frame.locator("#scale")
    expect(scale).to_be_visible()
    mm = float(scale.get_attribute("data-mm") or 0)
    expect(scale.locator("span")).to_have_text(f"{mm:g} mm")
    rule = scale.locator(".rule").bounding_box()
    stage = frame.locator("#stage").bounding_box()
    assert rule is not None and stage is not None
    expected_px = mm / series.pixel_spacing[1] * stage["width"] / series.hu.shape[2]
    assert abs(rule["width"] - expected_px) < 2, (rule["width"], expected_px)
    expect(frame.locator("#tl")).to_contain_text(f"Slice {k} / {n}")
    expect(frame.locator("#tl")).to_contain_text(f"z = {series.slices[k - 1].z:.1f} mm")
    expect(frame.locator("#bl")).to_have_text("W 80 L 40 (brain)")
    frame.locator("#stage").scroll_into_view_if_needed()
    page.screenshot(path=str(output_dir / "viewer-markers.png"))

    # The wheel: one slice per notch, drawn in the browser; the page follows once it stops.
    box = frame.locator("#stage").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    direction = 1 if k <= n // 2 else -1
    wall_ms = []
    for _ in range(WHEEL_SAMPLES):
        before = shown_slice(frame)
        if not 1 <= before + direction <= n:
            direction = -direction
        start = time.perf_counter()
        page.mouse.wheel(0, 100 * direction)
        frame.wait_for_function(
            "(b) => document.getElementById('stage').dataset.slice !== String(b)", arg=before
        )
        wall_ms.append((time.perf_counter() - start) * 1000)
        assert shown_slice(frame) == before + direction
    drawn_ms = frame.evaluate("() => window.__sliceViewer.latencies.slice()")
    timings[f"slice change by wheel, median of {WHEEL_SAMPLES}"] = (
        f"{statistics.median(wall_ms):.1f} ms (Playwright wheel → frame's slice changed); "
        f"{statistics.median(drawn_ms[-WHEEL_SAMPLES:]):.1f} ms (wheel event → the task after "
        "the next animation frame, i.e. about painted; measured in the page)"
    )
    k = shown_slice(frame)
    _wait_settled(page, frame, k, n)  # the caption, the slider and the bars follow
    assert np.array_equal(current_image(frame), apply_window(series.hu[k - 1], 40, 80))
    page.screenshot(path=str(output_dir / "viewer-wheel.png"))

    # The arrow keys, once the viewer has the focus (a click on the image).
    frame.locator("#stage").click()
    page.wait_for_timeout(300)  # let the click's own traffic pass
    step = -1 if k > 2 else 1
    key = "ArrowUp" if step == -1 else "ArrowDown"
    sent_before = sum(received)
    page.keyboard.press(key)
    page.keyboard.press(key)
    assert shown_slice(frame) == k + 2 * step
    k += 2 * step
    _wait_settled(page, frame, k, n)
    # The page's rerun for the settled slice sends the images' key, not the images again.
    slice_pngs = sum(len(data_url(png_bytes(apply_window(hu, 40, 80)))) for hu in series.hu)
    rerun_bytes = sum(received) - sent_before
    timings["server → page on a settled slice change"] = (
        f"{rerun_bytes / 1e3:.0f} kB (the study's slices at this window: {slice_pngs / 1e3:.0f} kB)"
    )
    assert rerun_bytes < slice_pngs / 4, (rerun_bytes, slice_pngs)

    # PgDn/PgUp move a tenth of the stack, End and Home to the last and first slice.
    tenth = max(1, round(n / 10))
    page.keyboard.press("End")
    assert shown_slice(frame) == n
    page.keyboard.press("PageUp")
    assert shown_slice(frame) == n - tenth
    page.keyboard.press("Home")
    assert shown_slice(frame) == 1
    page.keyboard.press("PageDown")
    assert shown_slice(frame) == 1 + tenth
    k = 1 + tenth
    _wait_settled(page, frame, k, n)

    # Preset hotkey 4 (bone): the window changes in the browser at once, then the page
    # switches its preset and sends the slices re-windowed.
    page.keyboard.press("4")
    bone = PRESETS["bone"]
    expect(frame.locator("#bl")).to_have_text("W 2800 L 600 (bone)")
    expect(slice_caption(page)).to_contain_text("W 2800 L 600")
    frame.wait_for_function("() => window.__sliceViewer.shown.key.endsWith('-600-2800')")
    assert np.array_equal(
        current_image(frame), apply_window(series.hu[k - 1], bone.level, bone.width)
    )
    # the page's preset box says so too
    expect(page.get_by_role("combobox", name="Window preset")).to_have_value("bone")

    # Right-drag: narrower and lower, the page gets the window on release.
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down(button="right")
    page.mouse.move(box["x"] + box["width"] / 2 - 100, box["y"] + box["height"] / 2 - 20, steps=5)
    live = frame.locator("#bl").inner_text()
    page.mouse.up(button="right")
    m = re.match(r"W (\d+) L (-?\d+)", live)
    assert m and (int(m.group(1)), int(m.group(2))) != (2800, 600), live
    expect(slice_caption(page)).to_contain_text(f"W {m.group(1)} L {m.group(2)}")

    # Shift + left-drag does the same (a trackpad has no right button): wider and higher.
    before = (int(m.group(1)), int(m.group(2)))
    page.keyboard.down("Shift")
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 60, box["y"] + box["height"] / 2 + 30, steps=5)
    live = frame.locator("#bl").inner_text()
    page.mouse.up()
    page.keyboard.up("Shift")
    m = re.match(r"W (\d+) L (-?\d+)", live)
    assert m and int(m.group(1)) > before[0] and int(m.group(2)) > before[1], (live, before)
    expect(slice_caption(page)).to_contain_text(f"W {m.group(1)} L {m.group(2)}")

    # The Grad-CAM layer (switched on in the page, computed for this slice) is drawn over the
    # slice; H hides and shows it in the browser, without a round trip.
    main = page.get_by_test_id("stMain")
    main.get_by_text("Grad-CAM heatmap", exact=True).click()
    frame.wait_for_function(
        "(k) => { const h = window.__sliceViewer.heat; return h && h.image && h.slice === k; }",
        arg=k,
        timeout=FIRST_PREDICTION_TIMEOUT_MS,
    )
    painted = (
        "() => { const c = document.getElementById('overlay');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"
    )
    frame.wait_for_function(f"() => ({painted})() > 0")
    expect(frame.locator("#tr")).to_contain_text("Grad-CAM 'any'")
    frame.locator("#stage").click()
    page.keyboard.press("h")
    assert frame.evaluate(painted) == 0, "H did not hide the heatmap"
    expect(frame.locator("#tr")).to_have_text("")
    page.keyboard.press("h")
    assert frame.evaluate(painted) > 0, "H did not show the heatmap again"

    for name, value in timings.items():
        print(f"TIMING {name}: {value}")
    assert browser_page.foreign_requests == [], browser_page.foreign_requests
    assert "Traceback" not in streamlit_server.log_tail(20_000), streamlit_server.log_tail()
