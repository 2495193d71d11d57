"""The worklist: one row per study of this session; a click opens it."""

from __future__ import annotations

import streamlit as st

from dashboard.state import Session


def render(sess: Session) -> None:
    if not sess.studies:
        st.info("Upload a DICOM zip or open the demo study to begin.")
        return
    sess.show_identity = st.toggle("Show patient names and IDs", value=sess.show_identity)
    for uid, study in sess.studies.items():
        series = study.default_series
        label = (
            f"{study.patient_label(sess.show_identity)} · "
            f"{study.study_date.isoformat() if study.study_date else 'no date'} · "
            f"{series.n_slices} slices"
        )
        if st.button(
            label,
            key=f"open-{uid}",
            width="stretch",
            type="primary" if uid == sess.open_uid else "secondary",
        ):
            sess.open_uid = uid
            st.rerun()
