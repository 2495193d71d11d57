"""Triage on arrival (core.watch) against the real Orthanc: every new CT study scored exactly
once per model, also across a SIGKILL and a restart; a bad study never stops the others; the
SR sent back reads from Orthanc and validates; one log line per study without patient data;
and, with the shipped model, the seconds from a study's arrival to its worklist row."""

from __future__ import annotations

import io
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from dicom_validation import dciodvfy_errors
from pacs_helpers import modified_copy, upload_all, upload_zip, wait_stable, zip_slices

from core.dicom.study import load_studies
from core.dicom.uids import valid_uid
from core.inference.predictor import Predictor, ResultCache
from core.labels import LABELS
from core.model.checkpoint import find_default_checkpoint, load_checkpoint
from core.pacs.dicomweb import DicomWebSource, PacsSettings
from core.pacs.feeds import OrthancChanges, QidoByDate
from core.pacs.orthanc_local import LocalOrthanc
from core.pacs.watch_state import WatchState
from core.reports.structured_report import read_findings
from core.review.pseudonym import for_installation
from core.review.store import ReviewStore
from core.review.worklist import build_worklist
from core.watch import Watcher

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tiny_weights: Path) -> Predictor:
    card = find_default_checkpoint(tiny_weights)
    assert card is not None
    return Predictor(load_checkpoint(card, allow_unverified=True), cache=ResultCache(1))


def patient_ids(zips: list[Path]) -> set[str]:
    return {
        str(pydicom.dcmread(io.BytesIO(zip_slices(z)[0]), stop_before_pixels=True).PatientID)
        for z in zips
    }


def test_each_new_study_is_scored_once_and_lands_in_the_worklist(
    pacs: LocalOrthanc,
    settings: PacsSettings,
    few_zips: list[Path],
    tiny: Predictor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    uids = [upload_zip(pacs, z) for z in few_zips]
    _, mr = modified_copy(few_zips[0], seed="watch-mr", modality="MR", n_slices=1)
    upload_all(pacs, mr)
    wait_stable(pacs, 4)
    source = DicomWebSource(settings)
    watcher = Watcher(source, OrthancChanges(settings), tiny)
    with caplog.at_level(logging.INFO, logger="core.watch"):
        assert watcher.poll() == Counter(scored=3, skipped=1)
        assert watcher.poll() == Counter()  # nothing new: nothing scored again
        late, slices = modified_copy(few_zips[1], seed="late", study_date="20260105")
        upload_all(pacs, slices)
        wait_stable(pacs, 5)
        assert watcher.poll() == Counter(scored=1)  # the late arrival, alone
    # Another feed over the same state (QIDO-RS, any date) finds nothing left to do.
    assert Watcher(source, QidoByDate(source, days=0), tiny).poll() == Counter()

    saved = ReviewStore().studies()
    assert sorted(r.study_instance_uid for r in saved) == sorted([*uids, late])
    assert {r.model_identity for r in saved} == {tiny.weights_identity}
    entries = build_worklist([], {}, saved, {}, for_installation())
    assert len(entries) == 4 and all(e.p_any is not None and not e.in_session for e in entries)
    assert [e.p_any for e in entries] == sorted((e.p_any for e in entries), reverse=True)

    lines = [r.getMessage() for r in caplog.records if r.name == "core.watch"]
    for uid in [*uids, late]:
        assert sum(f"study {uid} " in line and ": scored —" in line for line in lines) == 1
    assert sum(": skipped — holds MR, not CT" in line for line in lines) == 1
    shown = "\n".join(lines)
    assert not any(pid in shown for pid in patient_ids(few_zips) | {"PAT-late", "Doe"})
    assert "Patient " in shown  # named by the installation's pseudonym


def test_a_bad_study_never_stops_the_others(
    pacs: LocalOrthanc,
    settings: PacsSettings,
    few_zips: list[Path],
    tiny: Predictor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad, slices = modified_copy(few_zips[0], seed="damaged", damage_pixels=True)
    upload_all(pacs, slices)
    good = upload_zip(pacs, few_zips[1])
    wait_stable(pacs, 2)
    watcher = Watcher(DicomWebSource(settings), OrthancChanges(settings), tiny, max_attempts=2)
    with caplog.at_level(logging.INFO, logger="core.watch"):
        assert watcher.poll() == Counter(scored=1, failed=1)
        assert watcher.poll() == Counter(failed=1)  # retried once more…
        assert watcher.poll() == Counter()  # …then left alone
    state = WatchState()
    assert state.get(good, tiny.weights_identity).status == "scored"  # type: ignore[union-attr]
    failed = state.get(bad, tiny.weights_identity)
    assert failed is not None and (failed.status, failed.attempts) == ("failed", 2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and f"study {bad} " in warnings[0]
    assert "failed (attempt 1 of 2) — " in warnings[0]
    assert "holds no CT images" in warnings[0] and "Traceback" not in warnings[0]


def _watch_cmd(settings: PacsSettings, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "core.watch", "--dicomweb", settings.url,
        "--user", settings.username, "--interval", "0.5", *extra,
    ]  # fmt: skip


def _env(settings: PacsSettings) -> dict[str, str]:
    return {**os.environ, "ICH_DICOMWEB_PASSWORD": settings.password, "PYTHONPATH": str(ROOT)}


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            out.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return out


def _wait_for(lines: queue.Queue[str], text: str, seen: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"no {text!r} in {timeout_s} s; the watcher said:\n{''.join(seen)}")


def test_killed_mid_way_it_resumes_and_scores_each_once(
    pacs: LocalOrthanc,
    settings: PacsSettings,
    few_zips: list[Path],
    tiny_weights: Path,
    tmp_path: Path,
) -> None:
    uids = [upload_zip(pacs, z) for z in few_zips]
    dated, slices = modified_copy(few_zips[2], seed="fourth", study_date="20260106")
    upload_all(pacs, slices)
    uids.append(dated)
    wait_stable(pacs, 4)
    cmd = _watch_cmd(settings, "--weights", str(tiny_weights), "--allow-unverified")
    cmd += ["--store-results"]
    first = subprocess.Popen(cmd, env=_env(settings), stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        _wait_for(_lines(first), ": scored —", seen, timeout_s=180)
    finally:
        first.send_signal(signal.SIGKILL)  # no chance to tidy up
        first.wait(timeout=30)
    done = [s for s in WatchState().all() if s.status == "scored"]
    assert 1 <= len(done) < 4, "the watcher was to be killed mid-way"

    second = subprocess.run(
        [*cmd, "--once"], env=_env(settings), capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr
    lines = seen + second.stderr.splitlines()
    for uid in uids:
        assert sum(f"study {uid} " in ln and ": scored —" in ln for ln in lines) == 1, uid
    assert "Traceback" not in second.stderr
    state = WatchState().all()
    assert sorted(s.study_instance_uid for s in state if s.status == "scored") == sorted(uids)
    assert sorted(r.study_instance_uid for r in ReviewStore().studies()) == sorted(uids)

    # The SR sent back reads from Orthanc, validates, and holds what the worklist shows.
    source = DicomWebSource(settings)
    record = next(r for r in ReviewStore().studies() if r.study_instance_uid == dated)
    found = source.client.search_for_instances(valid_uid(dated), search_filters={"Modality": "SR"})
    assert len(found) >= 1
    sop = pydicom.Dataset.from_json(found[0])
    sr = source.client.retrieve_instance(
        sop.StudyInstanceUID, sop.SeriesInstanceUID, sop.SOPInstanceUID
    )
    buf = io.BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    assert dciodvfy_errors(buf.getvalue(), tmp_path, "sr.dcm") == []
    findings = read_findings(buf.getvalue())
    assert record.study_scores is not None
    for label in LABELS:
        assert findings[label] == pytest.approx(record.study_scores[label], abs=1e-6)
    # With valid source UIDs, the SR and the Secondary Capture join the source study.
    assert valid_uid(dated) == dated
    listed = source.find_study(dated)
    assert listed is not None and set(listed.modalities) == {"CT", "SR", "OT"}


def test_the_command_says_plainly_when_the_pacs_cannot_be_used(
    pacs: LocalOrthanc, settings: PacsSettings, tiny_weights: Path
) -> None:
    wrong = PacsSettings(settings.url, username=settings.username, password="wrong")
    gone = PacsSettings("http://127.0.0.1:9/dicom-web")
    for bad, expected in ((wrong, "refused the login (HTTP 401)"), (gone, "cannot be reached")):
        run = subprocess.run(
            [
                *_watch_cmd(bad, "--weights", str(tiny_weights), "--allow-unverified"),
                *("--once", "--feed", "qido"),
            ],
            env=_env(bad),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2, run.stderr
        assert expected in run.stderr and "Traceback" not in run.stderr
        assert "wrong" not in run.stderr


@pytest.mark.slow
def test_arrival_to_worklist_with_the_shipped_model(
    pacs: LocalOrthanc, settings: PacsSettings, small_zip: Path
) -> None:
    """The shipped model, end to end: seconds from the last image stored in Orthanc to the
    study's row in the review database (Orthanc's StableAge, one poll, retrieval, scoring)."""
    watcher = subprocess.Popen(
        _watch_cmd(settings, "--interval", "1"), env=_env(settings), stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    seen: list[str] = []
    try:
        _wait_for(_lines(watcher), "watching", seen, timeout_s=120)  # the model is loaded
        uid = upload_zip(pacs, small_zip)
        arrived = time.monotonic()
        store = ReviewStore()
        deadline = arrived + 300
        while not any(r.study_instance_uid == uid for r in store.studies()):
            assert time.monotonic() < deadline, "".join(seen)
            time.sleep(0.2)
        seconds = time.monotonic() - arrived
    finally:
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=60) == 0
    out = ROOT / "test-output" / "pacs"
    out.mkdir(parents=True, exist_ok=True)
    note = f"arrival in Orthanc → worklist row: {seconds:.1f} s (StableAge 3 s, poll every 1 s)"
    (out / "arrival-to-worklist.txt").write_text(note + "\n")
    print(note)
    assert seconds < 120

    # What the watcher saved is what the shipped model gives on the uploaded zip.
    record = next(r for r in store.studies() if r.study_instance_uid == uid)
    shipped = Predictor.from_default()
    expected = shipped.predict(load_studies(small_zip)[0]).study_scores
    assert record.study_scores == pytest.approx(expected, abs=1e-5)
    assert record.model_identity == shipped.weights_identity
