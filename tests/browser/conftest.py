"""Fixtures for the real-browser tests: a tiny model, a streamlit server on 127.0.0.1 started and
stopped by the test, and Debian's chromium driven by Playwright. Nothing leaves the loopback
interface: the server listens on 127.0.0.1 only and the browser aborts any other request."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("ICH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-proxy-server",
    "--metrics-recording-only",
    "--mute-audio",
]
SERVER_START_TIMEOUT_S = 60
SERVER_STOP_TIMEOUT_S = 10
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class StreamlitServer:
    url: str
    data_dir: Path
    weights_dir: Path
    process: subprocess.Popen
    log_path: Path
    started_at: float = 0.0  # time.monotonic() just before the process was started

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return "(no server log)"


@dataclass
class Browser:
    page: object  # playwright.sync_api.Page
    foreign_requests: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where the screenshots go: $ICH_TEST_OUTPUT, else <repo>/test-output/browser/."""
    env = os.environ.get("ICH_TEST_OUTPUT")
    out = Path(env) if env else ROOT / "test-output" / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _health(url: str) -> str | None:
    """The body of /_stcore/health, or None while the server does not answer. No proxy is
    consulted: the request goes straight to 127.0.0.1."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/_stcore/health", timeout=2) as resp:
            return resp.read().decode(errors="replace").strip()
    except (urllib.error.URLError, OSError):
        return None


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)


@pytest.fixture
def streamlit_server(tiny_weights: Path, tmp_path: Path) -> Iterator[StreamlitServer]:
    """`streamlit run dashboard/app.py` on a free 127.0.0.1 port with the tiny model and an empty
    review database; always stopped (terminate, then kill) at teardown."""
    yield from _serve(tiny_weights, tmp_path, allow_unverified=True)


@pytest.fixture
def shipped_server(tmp_path: Path) -> Iterator[StreamlitServer]:
    """The same with the model shipped in weights/ (the app's default)."""
    yield from _serve(ROOT / "weights", tmp_path)


@pytest.fixture
def shipped_predictor(shipped_server: StreamlitServer, monkeypatch: pytest.MonkeyPatch):
    """The shipped model as the server runs it: its backend (auto: the OpenVINO precision and
    batch size its speed probe chose, kept in that data folder) and its data folder (one
    conversion, one probe), so the test compares with what the page computed, not with torch
    fp32's slightly different numbers."""
    from core.inference.predictor import Predictor, ResultCache
    from core.model.checkpoint import load_checkpoint

    monkeypatch.setenv("ICH_REVIEW_DATA", str(shipped_server.data_dir))
    loaded = load_checkpoint(shipped_server.weights_dir)
    return Predictor(loaded, "cpu", cache=ResultCache(), backend="auto")


def _serve(
    weights: Path, tmp_path: Path, allow_unverified: bool = False
) -> Iterator[StreamlitServer]:
    """The tiny test model is on no manifest: it is served as an "unverified model"."""
    port = _free_port()
    data_dir = tmp_path / "review-data"
    data_dir.mkdir()
    log_path = tmp_path / "streamlit.log"
    env = {
        **os.environ,
        "ICH_WEIGHTS": str(weights),
        "ICH_REVIEW_DATA": str(data_dir),
        "ICH_BACKEND": "auto",  # what a user gets: OpenVINO where it loads, else torch
        "PYTHONUNBUFFERED": "1",
        **({"ICH_ALLOW_UNVERIFIED": "1"} if allow_unverified else {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "dashboard/app.py",
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    url = f"http://127.0.0.1:{port}"
    started_at = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = StreamlitServer(url, data_dir, weights, process, log_path, started_at)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"streamlit exited with code {process.returncode} before answering "
                    f"{url}/_stcore/health. Its output:\n{server.log_tail()}",
                    pytrace=False,
                )
            if _health(url) == "ok":
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"streamlit did not answer 'ok' on {url}/_stcore/health within "
                    f"{SERVER_START_TIMEOUT_S} s. Its output:\n{server.log_tail()}",
                    pytrace=False,
                )
            time.sleep(0.25)
        yield server
    finally:
        _stop(process)


@pytest.fixture
def browser_page(output_dir: Path) -> Iterator[Browser]:
    """A chromium page (Debian's /usr/bin/chromium, never a downloaded one) that refuses every
    request not addressed to the loopback interface and records it."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"chromium not found at {CHROMIUM}. `.ci/setup test` installs Debian's chromium "
            "and chromium-driver (never run `playwright install`).",
            pytrace=False,
        )
    from playwright.sync_api import Route, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": 1600, "height": 1000},
                device_scale_factor=1,
                color_scheme="dark",
                service_workers="block",
            )
            result = Browser(page=None)

            def only_loopback(route: Route) -> None:
                host = urlsplit(route.request.url).hostname or ""
                if route.request.url.startswith(("data:", "blob:")) or host in LOOPBACK_HOSTS:
                    route.continue_()
                else:
                    result.foreign_requests.append(route.request.url)
                    route.abort()

            context.route("**/*", only_loopback)
            result.page = context.new_page()
            yield result
            context.close()
        finally:
            browser.close()
