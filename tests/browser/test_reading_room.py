"""The reading room's flow in Chromium with the shipped model: while a study is scored the page
says so where its probabilities will appear; once scored the viewer opens at the most
suspicious slice; a saved review is on the worklist and in its CSV without another click."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from test_browser import FIRST_PREDICTION_TIMEOUT_MS, STEP_TIMEOUT_MS
from viewer_page import plotly_chart, shown_slice, viewer_frame

from core.dicom.study import load_studies

STUDY = "ID_b026766696"  # a real study with a large hematoma, off-centre along the head


@pytest.mark.slow
def test_scoring_message_then_the_peak_slice_then_a_review_on_the_worklist(
    shipped_server, shipped_predictor, browser_page, study_zips: list[Path], output_dir: Path
) -> None:
    path = next(p for p in study_zips if p.stem == STUDY)
    (study,) = load_studies(path)
    peak = int(shipped_predictor.predict(study).peak_slice["any"]) + 1
    n = study.default_series.n_slices
    assert peak != (n + 1) // 2  # else opening at the peak could not be told from the middle

    page: Page = browser_page.page
    page.set_default_timeout(STEP_TIMEOUT_MS)
    expect.set_options(timeout=STEP_TIMEOUT_MS)
    page.goto(shipped_server.url, wait_until="domcontentloaded")
    sidebar, main = page.get_by_test_id("stSidebar"), page.get_by_test_id("stMain")
    sidebar.get_by_test_id("stFileUploader").locator("input[type=file]").set_input_files(str(path))

    scoring = main.get_by_text("Scoring…", exact=False)
    expect(scoring).to_be_visible(timeout=FIRST_PREDICTION_TIMEOUT_MS)
    # The slice is drawn before the model runs: the reader can look while it scores.
    expect(viewer_frame(page).locator("#stage")).to_have_attribute("data-slice", re.compile(r"\d+"))
    still = scoring.count() > 0
    page.screenshot(path=str(output_dir / "viewer-scoring.png"))
    print(f"\nSCORING shown as: {scoring.first.inner_text() if still else '(already done)'!r}")
    expect(plotly_chart(page, "Probabilities")).to_be_visible(timeout=FIRST_PREDICTION_TIMEOUT_MS)
    expect(scoring).to_have_count(0)
    expect(main.get_by_text(f"Slice {peak} of {n} ", exact=False).first).to_be_visible()
    frame = viewer_frame(page)
    expect(frame.locator("#stage")).to_have_attribute("data-slice", str(peak))
    assert shown_slice(frame) == peak

    main.get_by_text("hemorrhage", exact=True).first.click()
    reviewer = main.get_by_label("Reviewer")
    reviewer.fill("Dr Rowe")
    main.get_by_role("button", name="Save review").click()
    expect(main.get_by_text("Review saved", exact=False)).to_be_visible()
    # The CSV exported right then holds the review: no further click or rerun in between.
    with page.expect_download() as download:
        main.get_by_role("button", name="Export CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text("utf-8"))))
    assert len(rows) == 1
    review = next(v for k, v in rows[0].items() if k and k.lower().startswith("review"))
    assert review.startswith("hemorrhage · Dr Rowe"), rows[0]
    page.screenshot(path=str(output_dir / "review-saved-worklist.png"))
