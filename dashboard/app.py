"""ICH review: streamlit run dashboard/app.py. Page wiring only; every computation is in core/."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # run from any folder, installed or not

from dashboard.state import session  # noqa: E402
from dashboard.views import intake, model_card, viewer, worklist  # noqa: E402

st.set_page_config(page_title="ICH review", page_icon="🧠", layout="wide")
sess = session()
with st.sidebar:
    st.title("ICH review")
    intake.render(sess)
    worklist.render(sess)
    model_card.render()
if sess.open_uid and sess.open_uid in sess.studies:
    viewer.render(sess.studies[sess.open_uid])
else:
    st.markdown("### Acute intracranial hemorrhage review\nUpload head CT studies in the sidebar.")
