"""``python -m core.watch --dicomweb URL [--interval S] [--once] [--store-results] [...]``:
triage on arrival.

Polls a PACS for new CT studies (Orthanc's change feed, or QIDO-RS by date: core.pacs.feeds),
scores each with the installed model, saves it to the review database, so it appears in every
dashboard's worklist before a radiologist opens it, and with ``--store-results`` sends the
findings back as a Comprehensive SR and a Secondary Capture (STOW-RS).

Each study is scored once per model and the watcher resumes where it was after a restart
(core.pacs.watch_state, in the app's data folder). One study at a time, dropped once scored,
with a one-entry result cache: memory stays that of one study. A study that fails (cut-off
transfer, damaged images) is logged and retried at later polls up to ``--max-attempts`` times;
it never stops the others. Each study gets one log line naming it by its UID and the
installation's pseudonym, never by patient name or ID.

The password is read from ``$ICH_DICOMWEB_PASSWORD`` (never from the command line, where other
users could see it). Exit codes: 0 done (or stopped); 2 the PACS cannot be used (``--once``);
3 no usable model.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from core.errors import ICHError, ModelError, NotCTStudyError, PacsError
from core.inference.predictor import Predictor, ResultCache, resolve_device
from core.model.checkpoint import default_weights_dir, find_default_checkpoint, load_checkpoint
from core.pacs.dicomweb import ENV_CA, ENV_PASSWORD, ENV_URL, ENV_USER, DicomWebSource, PacsSettings
from core.pacs.feeds import Feed, detect_feed
from core.pacs.triage import result_objects, save_to_worklist, score
from core.pacs.watch_state import WatchedStudy, WatchState
from core.review.pseudonym import Pseudonymizer, for_installation
from core.review.store import ReviewStore

log = logging.getLogger("core.watch")

EXIT_OK = 0
EXIT_PACS = 2
EXIT_MODEL = 3
DEFAULT_INTERVAL_S = 10.0
DEFAULT_MAX_ATTEMPTS = 3


class Watcher:
    """Finds new studies on one PACS and triages each once."""

    def __init__(
        self,
        source: DicomWebSource,
        feed: Feed,
        predictor: Predictor,
        *,
        store: ReviewStore | None = None,
        state: WatchState | None = None,
        names: Pseudonymizer | None = None,
        store_results: bool = False,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.source = source
        self.feed = feed
        self.predictor = predictor
        self.store = store or ReviewStore()
        self.state = state or WatchState()
        self.names = names or for_installation()
        self.store_results = store_results
        self.max_attempts = max_attempts
        self.weights = predictor.weights_identity

    def poll(self, should_stop: Callable[[], bool] = lambda: False) -> Counter[str]:
        """Handle every arrival since the saved position, then retry failed studies; the
        count of studies by outcome. Raises PacsError when the feed itself cannot be read."""
        outcomes: Counter[str] = Counter()
        handled: set[str] = set()
        since = self.state.cursor(self.feed.key)
        for arrival in self.feed.arrivals(since):
            if should_stop():
                return outcomes
            uid = arrival.study_instance_uid
            if uid is not None and uid not in handled:
                handled.add(uid)
                outcome = self.handle(uid)
                if outcome is not None:
                    outcomes[outcome.status] += 1
            if arrival.position is not None:
                self.state.set_cursor(self.feed.key, arrival.position)
        # Failed at an earlier poll: try again (a study that failed just now waits a poll).
        for uid in self.state.to_retry(self.weights, self.max_attempts):
            if should_stop():
                break
            if uid in handled:
                continue
            outcome = self.handle(uid)
            if outcome is not None:
                outcomes[outcome.status] += 1
        return outcomes

    def handle(self, study_uid: str) -> WatchedStudy | None:
        """Triage one study unless these weights already did (None then); never raises for
        a problem of the study itself, which is recorded and logged instead."""
        done = self.state.get(study_uid, self.weights)
        if done is not None and (done.status != "failed" or done.attempts >= self.max_attempts):
            return None
        patient = self.names.pseudonym(study_uid)
        try:
            listed = self.source.find_study(study_uid)
            if listed is not None:
                patient = self.names.label(listed.patient_id, "", study_uid)
                if not listed.is_ct:
                    kinds = ", ".join(listed.modalities) or "no images"
                    raise NotCTStudyError(f"holds {kinds}, not CT")
            study = self.source.retrieve_study(study_uid)
            patient = self.names.study_label(study)
            scored = score(study, self.predictor)
            save_to_worklist(self.store, scored)
            sent = ""
            if self.store_results:
                stored = self.source.store(result_objects(scored, self.predictor, self.names))
                sent = f"; SR+SC stored ({stored} objects)"
            line = scored.result.summary() + sent
            record = self.state.record(study_uid, self.weights, "scored", line, scored.result.p_any)
            log.info("study %s (%s): scored — %s", study_uid, patient, line)
            return record
        except NotCTStudyError as exc:
            record = self.state.record(study_uid, self.weights, "skipped", str(exc))
            log.info("study %s (%s): skipped — %s", study_uid, patient, _short(exc))
            return record
        except Exception as exc:
            # Whatever one study throws (a PACS error, damaged images, a bug it triggers) is
            # this study's failure; the next study is not affected.
            record = self.state.record(study_uid, self.weights, "failed", str(exc))
            log.warning(
                "study %s (%s): failed (attempt %d of %d) — %s",
                study_uid,
                patient,
                record.attempts,
                self.max_attempts,
                _short(exc) if isinstance(exc, ICHError) else type(exc).__name__,
            )
            log.debug("details", exc_info=True)
            return record

    def run(self, interval_s: float, stop: threading.Event, once: bool = False) -> int:
        """Poll until ``stop`` is set (or once); a PACS that cannot be read is logged and
        polled again at the next interval."""
        while not stop.is_set():
            try:
                outcomes = self.poll(stop.is_set)
                if outcomes:
                    log.info(
                        "poll done: %s", ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items()))
                    )
            except PacsError as exc:
                log.warning("PACS not usable now: %s", exc)
                if once:
                    return EXIT_PACS
            if once:
                return EXIT_OK
            stop.wait(interval_s)
        return EXIT_OK


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:199] + "…"


def watch_predictor(weights: Path | None, allow_unverified: bool = False) -> Predictor:
    """The model to score with: a card, a weights folder, or the installed one; with a
    one-entry result cache (the watcher never looks at a study twice). A model not on the
    manifest only with ``allow_unverified`` (core.model.integrity)."""
    choice = weights or default_weights_dir()
    card = choice if choice.suffix == ".json" else find_default_checkpoint(choice)
    if card is None:
        raise ModelError(f"No model card found in {choice}.")
    device = resolve_device(None)
    loaded = load_checkpoint(card, device=device, allow_unverified=allow_unverified)
    if not loaded.trust.verified:
        log.warning("scoring with an unverified model: %s", loaded.trust.reason)
    return Predictor(loaded, device=device, cache=ResultCache(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.watch",
        description="Score new CT studies as they arrive on a PACS (DICOMweb).",
    )
    parser.add_argument(
        "--dicomweb", default=os.environ.get(ENV_URL), help=f"DICOMweb root URL (or ${ENV_URL})"
    )
    parser.add_argument("--user", default=os.environ.get(ENV_USER, ""), help=f"(or ${ENV_USER})")
    parser.add_argument("--ca", default=os.environ.get(ENV_CA), help="CA certificate (PEM)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, help="seconds")
    parser.add_argument("--once", action="store_true", help="poll once, then exit")
    parser.add_argument(
        "--store-results", action="store_true", help="send SR + Secondary Capture back"
    )
    parser.add_argument("--weights", type=Path, help="model card or weights folder")
    parser.add_argument(
        "--allow-unverified",
        action="store_true",
        help="score with a model not on the manifest (core.model.integrity)",
    )
    parser.add_argument("--feed", choices=("auto", "orthanc", "qido"), default="auto")
    parser.add_argument("--days", type=int, default=1, help="QIDO feed: last N days (0: all)")
    parser.add_argument("--max-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in (
        "dicomweb_client",
        "highdicom",
        "urllib3",
        "core.dicom",
        "core.inference",
        "core.model",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.dicomweb:
        parser.error(f"give --dicomweb URL or set {ENV_URL}")
    try:
        settings = PacsSettings(
            args.dicomweb,
            username=args.user,
            password=os.environ.get(ENV_PASSWORD, ""),
            ca_bundle=args.ca,
        )
        source = DicomWebSource(settings)
        feed = detect_feed(source, args.feed, args.days)
    except PacsError as exc:
        log.error("%s", exc)
        return EXIT_PACS
    try:
        predictor = watch_predictor(args.weights, args.allow_unverified)
    except ICHError as exc:
        log.error("%s", exc)
        return EXIT_MODEL
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info(
        "watching %s (%s) with %s%s",
        settings.url,
        feed.key.split(":", 1)[0],
        predictor.weights_identity,
        ", storing results" if args.store_results else "",
    )
    started = time.monotonic()
    try:
        watcher = Watcher(
            source,
            feed,
            predictor,
            store_results=args.store_results,
            max_attempts=args.max_attempts,
        )
        code = watcher.run(args.interval, stop, once=args.once)
    except ICHError as exc:  # the data folder cannot be used
        log.error("%s", exc)
        return EXIT_PACS
    log.info("stopped after %.0f s", time.monotonic() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
