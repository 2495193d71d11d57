"""The worklist filled by the PACS watcher, in a real browser: studies stored in the test
session's Orthanc are scored by ``python -m core.watch`` (the tiny model) into the dashboard's
data folder and appear as worklist rows; the seconds from their arrival to the rows on the page
are measured and the page is kept as test-output/browser/worklist-watcher.png."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pacs_helpers import upload_zip
from playwright.sync_api import Page, expect

from core.pacs.dicomweb import PacsSettings
from core.pacs.orthanc_local import LocalOrthanc

ROOT = Path(__file__).resolve().parents[2]
ROWS_TIMEOUT_S = 240


@pytest.fixture
def pacs_env(monkeypatch: pytest.MonkeyPatch, settings: PacsSettings) -> PacsSettings:
    """The dashboard's PACS settings (set before the streamlit server starts)."""
    monkeypatch.setenv("ICH_DICOMWEB_URL", settings.url)
    monkeypatch.setenv("ICH_DICOMWEB_USER", settings.username)
    monkeypatch.setenv("ICH_DICOMWEB_PASSWORD", settings.password)
    return settings


@pytest.fixture
def watcher(pacs_env: PacsSettings, streamlit_server, tiny_weights: Path) -> Iterator[list[str]]:  # noqa: ANN001
    """``python -m core.watch`` on the test Orthanc, writing into the dashboard's data folder;
    yields once its model is loaded, with the lines it logged."""
    env = {**os.environ, "ICH_REVIEW_DATA": str(streamlit_server.data_dir)}
    cmd = [
        sys.executable, "-m", "core.watch", "--dicomweb", pacs_env.url,
        "--user", pacs_env.username, "--interval", "1", "--weights", str(tiny_weights),
        "--allow-unverified",  # the tiny test model is on no manifest
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if " watching " in line:
                break
        else:
            pytest.fail("the watcher stopped before watching:\n" + "".join(lines))
        yield lines
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _watched_rows(page: Page) -> int:
    """Worklist rows scored by the watcher, as the caption under the worklist counts them (the
    grid itself is drawn on a canvas)."""
    caption = page.get_by_test_id("stMain").get_by_text(re.compile(r"scored on arrival by"))
    if caption.count() == 0:
        return 0
    found = re.search(r"(\d+) scored on arrival", caption.first.inner_text())
    return int(found.group(1)) if found else 0


@pytest.mark.slow
def test_the_worklist_fills_as_studies_arrive(
    pacs_env: PacsSettings,
    pacs: LocalOrthanc,
    streamlit_server,  # noqa: ANN001
    watcher: list[str],
    browser_page,  # noqa: ANN001
    output_dir: Path,
    few_zips: list[Path],
) -> None:
    page: Page = browser_page.page
    page.goto(streamlit_server.url)
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text("No CT studies on the PACS.")).to_be_visible(timeout=60_000)
    for z in few_zips:
        upload_zip(pacs, z)
    arrived = time.monotonic()
    rows = 0
    while rows < len(few_zips):
        assert time.monotonic() - arrived < ROWS_TIMEOUT_S, (
            f"{rows} worklist rows after {ROWS_TIMEOUT_S} s; server log:\n"
            + streamlit_server.log_tail()
        )
        page.reload()
        sidebar.get_by_text("Server:").first.wait_for(timeout=60_000)
        page.wait_for_timeout(500)
        rows = _watched_rows(page)
    seconds = time.monotonic() - arrived
    note = (
        f"{len(few_zips)} studies stored in Orthanc → all {len(few_zips)} rows in the browser's "
        f"worklist after {seconds:.1f} s (tiny model; StableAge 3 s, watcher polls every 1 s)"
    )
    print(note)
    (output_dir / "worklist-watcher.txt").write_text(note + "\n")

    main = page.get_by_test_id("stMain")
    n = len(few_zips)
    expect(
        main.get_by_text(f"{n} studies · {n} scored on arrival by the PACS watcher")
    ).to_be_visible()
    # The sidebar's PACS panel lists the same studies, each with the watcher's P(any).
    expect(sidebar.get_by_text("Recent CT studies")).to_be_visible()
    # The grid is drawn on a canvas once its data arrived: give it a moment before the picture.
    main.get_by_test_id("stDataFrame").locator("canvas").first.wait_for(timeout=30_000)
    page.wait_for_timeout(2_000)
    path = output_dir / "worklist-watcher.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 20_000
    assert not browser_page.foreign_requests
