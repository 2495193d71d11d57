"""The PACS panel in the sidebar: recent CT studies on the hospital's PACS with their triage
state, "Open" pulls one into the viewer, "Send results" stores the SR and the Secondary Capture
of the open study back. The server comes from ``ICH_DICOMWEB_URL`` (and _USER, _PASSWORD, _CA)
or the ``[pacs]`` table of ``.streamlit/secrets.toml``; the work is done in core.pacs."""

from __future__ import annotations

import os
import time

import streamlit as st

from core.errors import ICHError, PacsError
from core.inference.predictor import Predictor
from core.pacs.dicomweb import DicomWebSource, PacsSettings, PacsStudy
from core.pacs.triage import result_objects, score
from core.pacs.watch_state import WatchedStudy, WatchState
from core.review.pseudonym import Pseudonymizer
from dashboard.state import Session
from dashboard.text import plain

#: A listing older than this is fetched again at the next rerun.
LIST_MAX_AGE_S = 60.0
LIST_SIZE = 25


def configured() -> PacsSettings | None:
    """The PACS settings, or None when none is configured (an invalid URL is reported)."""
    try:
        secrets = st.secrets.get("pacs")
    except Exception:  # noqa: BLE001 - no secrets.toml at all: only the environment counts
        secrets = None
    try:
        return PacsSettings.from_settings(os.environ, secrets)
    except PacsError as exc:
        st.error(str(exc))
        return None


def triage_states(state: WatchState, weights: str | None) -> dict[str, WatchedStudy]:
    """The watcher's outcome per study: with the current model when it has one, else any."""
    found: dict[str, WatchedStudy] = {}
    for item in state.all():
        mine = item.weights_identity == weights
        if mine or item.study_instance_uid not in found:
            found[item.study_instance_uid] = item
    return found


def _triage_text(item: WatchedStudy | None) -> str:
    if item is None:
        return "not scored yet"
    if item.status == "scored" and item.p_any is not None:
        return f"P(any) {item.p_any:.2f}"
    return item.status


def _listing(source: DicomWebSource, refresh: bool) -> list[PacsStudy] | str:
    cached = st.session_state.get("pacs-list")
    if refresh or cached is None or time.monotonic() - cached[0] > LIST_MAX_AGE_S:
        try:
            cached = (time.monotonic(), source.search_ct_studies(limit=LIST_SIZE))
        except ICHError as exc:
            cached = (time.monotonic(), str(exc))
        st.session_state["pacs-list"] = cached
    return cached[1]


def render(
    sess: Session, predictor: Predictor | None, names: Pseudonymizer, state: WatchState
) -> DicomWebSource | None:
    """The panel; the PACS source when one is configured (the worklist fetches from it)."""
    settings = configured()
    with st.expander("PACS", expanded=settings is not None):
        if settings is None:
            st.caption(
                "No PACS configured. Set ICH_DICOMWEB_URL (and ICH_DICOMWEB_USER, "
                "ICH_DICOMWEB_PASSWORD) or a [pacs] table in .streamlit/secrets.toml."
            )
            return None
        source = DicomWebSource(settings)
        st.caption(f"Server: {plain(settings.url)}")
        listing = _listing(source, st.button("Refresh", key="pacs-refresh"))
        if isinstance(listing, str):
            st.error(listing)
            return source
        if not listing:
            st.info("No CT studies on the PACS.")
        else:
            states = triage_states(state, predictor.weights_identity if predictor else None)
            labels = {
                s.study_instance_uid: " · ".join(
                    part
                    for part in (
                        names.label(s.patient_id, s.patient_name, s.study_instance_uid),
                        s.study_date.isoformat() if s.study_date else "",
                        _triage_text(states.get(s.study_instance_uid)),
                    )
                    if part
                )
                for s in listing
            }
            chosen = st.selectbox(
                "Recent CT studies",
                list(labels),
                format_func=lambda uid: labels[uid],
                key="pacs-study",
            )
            if st.button("Open", key="pacs-open", width="stretch") and chosen:
                open_study(sess, source, chosen)
        _send_button(sess, source, predictor, names)
    return source


def open_study(sess: Session, source: DicomWebSource, uid: str) -> None:
    """Fetch one study into this session (the model runs on it like on an upload)."""
    with st.spinner("Fetching the study from the PACS…"):
        try:
            study = source.retrieve_study(uid)
        except ICHError as exc:
            sess.messages.append(("PACS", "error", str(exc)))
            st.rerun()  # the messages are drawn above this panel
    sess.studies[uid] = study
    sess.from_pacs.add(uid)
    if uid not in sess.predictions and uid not in sess.pending:
        sess.pending.append(uid)
    sess.messages += [("PACS", "warning", w) for w in study.warnings]
    sess.messages.append(
        ("PACS", "success", f"Study fetched ({study.default_series.n_slices} slices).")
    )
    sess.open_uid = uid


def render_fetch(sess: Session, source: DicomWebSource, uid: str) -> None:
    """For a worklist row scored by the watcher but not open here: fetch it."""
    if st.button("Fetch this study from the PACS", key="pacs-fetch-open"):
        open_study(sess, source, uid)
        st.rerun()


def _send_button(
    sess: Session, source: DicomWebSource, predictor: Predictor | None, names: Pseudonymizer
) -> None:
    uid = sess.open_uid
    ready = (
        predictor is not None
        and uid is not None
        and uid in sess.from_pacs
        and uid in sess.predictions
    )
    if not st.button(
        "Send results to the PACS",
        key="pacs-send",
        disabled=not ready,
        width="stretch",
        help="Stores the structured report (SR) and the key image (Secondary Capture) of the "
        "open study on the PACS.",
    ):
        return
    assert predictor is not None and uid is not None
    with st.spinner("Building and sending the SR and the key image…"):
        try:
            scored = score(sess.studies[uid], predictor)  # cached probabilities: no new pass
            stored = source.store(result_objects(scored, predictor, names))
        except ICHError as exc:
            sess.messages.append(("PACS", "error", str(exc)))
            st.rerun()  # the messages are drawn above this panel
    sess.messages.append(("PACS", "success", f"{stored} result objects (SR, key image) stored."))
    st.rerun()
