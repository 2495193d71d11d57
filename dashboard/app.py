"""ICH review — ``streamlit run dashboard/app.py``. Page wiring only; work is done in core/.

Order matters: the slice is drawn before the model runs (pending predictions run at the end of
the script, then the page reruns with the probabilities).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# Something on the page before the heavy imports (torch, OpenVINO) and the model load: the
# first start of a server otherwise shows a blank page for many seconds.
st.set_page_config(page_title="ICH review", page_icon="🧠", layout="wide")
with st.sidebar:
    st.title("ICH review")
starting = st.empty()
starting.caption("Starting…")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works installed or not

from core.errors import ICHError  # noqa: E402
from dashboard import resources  # noqa: E402
from dashboard.state import session  # noqa: E402
from dashboard.views import (  # noqa: E402
    access,
    intake,
    model_card,
    pacs,
    reports,
    review,
    viewer,
    worklist,
)
from dashboard.views import patient as patient_view  # noqa: E402

starting.empty()
sess = session()
access.render(sess)  # loopback, the hospital's login, or a refusal (st.stop) with the reason
try:
    store = resources.current_store()
    names = resources.current_pseudonyms()
    watch_state = resources.current_watch_state()
except ICHError as exc:  # the data folder or the database cannot be used: say so, in words
    st.error(str(exc))
    st.stop()
with st.spinner("Loading the model…"):  # seconds on a server's first start, then cached
    predictor, model_message = resources.predictor(
        resources.weights_dir(), resources.allow_unverified()
    )

with st.sidebar:
    model_card.render(predictor, model_message)
    intake.render(sess)
    pacs_source = pacs.render(sess, predictor, names, watch_state)

watched = {s.study_instance_uid for s in watch_state.all() if s.status == "scored"}
threshold = predictor.study_threshold if predictor is not None else None
worklist.render(sess, store, names, threshold, watched)
study = sess.studies.get(sess.open_uid) if sess.open_uid else None
scoring_slot = None  # where the open study's probabilities will appear
if study is not None:
    prediction = sess.predictions.get(study.study_instance_uid)
    patient = names.study_label(study, sess.show_identity)
    pending = study.study_instance_uid in sess.pending
    scoring_slot = viewer.render(study, prediction, predictor, model_message, patient, pending)
    patient_view.render(sess, predictor, study, patient)
    review.render(sess, store, names, study, prediction)
    reports.render(sess, store, study, prediction, predictor, patient)
elif sess.open_uid:
    if pacs_source is not None and sess.open_uid in watched:
        pacs.render_fetch(sess, pacs_source, sess.open_uid)
    review.render_saved(store, sess.open_uid)

if predictor is not None and sess.pending:
    # The open study first, its progress where its probabilities will appear; the others
    # (several zips in one upload) below, each in turn.
    order = sorted(sess.pending, key=lambda u: u != sess.open_uid)
    for uid in order:
        study = sess.studies[uid]
        slot = scoring_slot if uid == sess.open_uid and scoring_slot is not None else st.empty()
        bar = slot.progress(0.0, text=f"Scoring… 0/{study.default_series.n_slices} slices")

        def progress(done: int, total: int, bar=bar) -> None:  # this study's bar, bound now
            bar.progress(done / max(total, 1), text=f"Scoring… {done}/{total} slices")

        sess.predictions[uid] = predictor.predict(study, progress=progress)
        sess.pending.remove(uid)
        slot.empty()
    st.rerun()
