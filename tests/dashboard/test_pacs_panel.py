"""The dashboard's PACS panel against the real Orthanc (streamlit's AppTest): the recent studies
with their triage state, the watcher's studies in the worklist beside this session's, "Open"
pulls a study and the model runs on it, "Send results" stores the SR and the key image."""

from __future__ import annotations

from pathlib import Path

import pytest
from pacs_helpers import modified_copy, upload_all, upload_zip, wait_stable
from streamlit.testing.v1 import AppTest

from core.inference.predictor import Predictor, ResultCache
from core.model.checkpoint import find_default_checkpoint, load_checkpoint
from core.pacs.dicomweb import DicomWebSource, PacsSettings
from core.pacs.feeds import QidoByDate
from core.pacs.orthanc_local import LocalOrthanc
from core.watch import Watcher
from dashboard.text import plain

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
TIMEOUT = 180


def test_without_a_pacs_the_panel_says_how_to_set_one(
    app_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ICH_DICOMWEB_URL", raising=False)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert any("No PACS configured" in c.value for c in at.sidebar.caption)


def test_panel_lists_opens_and_sends_back(
    app_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    pacs: LocalOrthanc,
    settings: PacsSettings,
    few_zips: list[Path],
    tiny_weights: Path,
) -> None:
    watched = upload_zip(pacs, few_zips[0])
    fresh, slices = modified_copy(few_zips[1], seed="panel", study_date="20260107")
    upload_all(pacs, slices)
    wait_stable(pacs, 2)
    # The watcher scored one study before the dashboard opened (same data folder).
    source = DicomWebSource(settings)
    card = find_default_checkpoint(tiny_weights)
    assert card is not None
    tiny = Predictor(load_checkpoint(card, allow_unverified=True), cache=ResultCache(1))
    watcher = Watcher(source, QidoByDate(source, days=0), tiny)
    assert watcher.handle(watched) is not None

    monkeypatch.setenv("ICH_DICOMWEB_URL", settings.url)
    monkeypatch.setenv("ICH_DICOMWEB_USER", settings.username)
    monkeypatch.setenv("ICH_DICOMWEB_PASSWORD", settings.password)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception

    picker = at.sidebar.selectbox(key="pacs-study")
    options = list(picker.options)
    assert len(options) == 2
    scored = next(o for o in options if "P(any) " in o)  # the watcher's study
    waiting = next(o for o in options if "not scored yet" in o)
    assert "2026-01-07" in waiting and "2026-01-07" not in scored  # the new study's date
    assert all(o.startswith("Patient ") and "Doe" not in o for o in options)  # pseudonyms
    table = at.main.get("dataframe")[0].value
    assert list(table["Source"]) == ["PACS watcher"]
    assert list(table["Images"]) == ["fetch from PACS"]
    assert at.sidebar.button(key="pacs-send").disabled  # nothing from the PACS is open yet

    picker.set_value(fresh).run()
    at.sidebar.button(key="pacs-open").click().run()
    assert not at.exception, at.exception
    table = at.main.get("dataframe")[0].value
    assert sorted(table["Source"]) == ["PACS", "PACS watcher"]
    assert all(0.0 <= p <= 1.0 for p in table["P(any)"])  # the model ran on the fetched study
    assert "Study fetched" in " ".join(s.value for s in at.sidebar.success)

    at.sidebar.button(key="pacs-send").click().run()
    assert not at.exception, at.exception
    assert plain("2 result objects (SR, key image) stored.") in " ".join(
        s.value for s in at.sidebar.success
    )
    listed = source.find_study(fresh)
    assert listed is not None and set(listed.modalities) == {"CT", "SR", "OT"}
