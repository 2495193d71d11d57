"""ICH review — ``streamlit run dashboard/app.py``. Page wiring only; work is done in core/.

Order matters: the slice is drawn before the model runs (pending predictions run at the end of
the script, then the page reruns with the probabilities).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works installed or not

from core.errors import ICHError  # noqa: E402
from dashboard import resources  # noqa: E402
from dashboard.state import session  # noqa: E402
from dashboard.views import intake, model_card, reports, review, viewer, worklist  # noqa: E402
from dashboard.views import patient as patient_view  # noqa: E402

st.set_page_config(page_title="ICH review", page_icon="🧠", layout="wide")
sess = session()
try:
    store = resources.current_store()
    names = resources.current_pseudonyms()
except ICHError as exc:  # the data folder or the database cannot be used: say so, in words
    st.error(str(exc))
    st.stop()
predictor, model_message = resources.predictor(resources.weights_dir())

with st.sidebar:
    st.title("ICH review")
    model_card.render(predictor, model_message)
    intake.render(sess)

worklist.render(sess, store, names, predictor.study_threshold if predictor is not None else None)
study = sess.studies.get(sess.open_uid) if sess.open_uid else None
if study is not None:
    prediction = sess.predictions.get(study.study_instance_uid)
    patient = names.study_label(study, sess.show_identity)
    viewer.render(study, prediction, predictor, model_message, patient)
    patient_view.render(sess, predictor, study, patient)
    review.render(sess, store, names, study, prediction)
    reports.render(sess, store, study, prediction, predictor, patient)
elif sess.open_uid:
    review.render_saved(store, sess.open_uid)

if predictor is not None and sess.pending:
    bar = st.progress(0.0, text="Running the model…")
    for uid in list(sess.pending):
        study = sess.studies[uid]

        def progress(done: int, total: int) -> None:
            bar.progress(done / max(total, 1), text=f"Running the model: slice {done}/{total}")

        sess.predictions[uid] = predictor.predict(study, progress=progress)
        sess.pending.remove(uid)
    bar.empty()
    st.rerun()
