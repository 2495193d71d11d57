"""Report downloads for the open study: a one-page PDF and a DICOM Secondary Capture for PACS.
Built on request (a Grad-CAM and the bleed estimate are computed), then offered for download."""

from __future__ import annotations

import streamlit as st

from core.dicom.study import Study
from core.inference.predictor import Predictor, StudyPrediction
from core.reports.pdf import render_pdf, report_input
from core.reports.secondary_capture import secondary_capture_bytes
from core.review.store import ReviewStore
from dashboard import resources
from dashboard.state import Session


def render(
    sess: Session,
    store: ReviewStore,
    study: Study,
    prediction: StudyPrediction | None,
    predictor: Predictor | None,
    patient: str,
) -> None:
    """``patient``: the label the page shows for the study (pseudonym or identity)."""
    if prediction is None or predictor is None:
        return
    uid = study.study_instance_uid
    reviews = store.history(uid)
    # A new review, or showing/hiding identity, makes the prepared report stale.
    key = f"report-{uid}-{len(reviews)}-{int(sess.show_identity)}"
    st.markdown("##### Reports")
    cols = st.columns([2, 2, 2, 3])
    if cols[0].button("Prepare reports", key=f"prepare-{uid}", width="stretch"):
        series = study.default_series
        with st.spinner("Preparing the report…"):
            estimate = resources.bleed_estimate(
                predictor, prediction.weights_identity, series, prediction, series.pixel_hash
            )
            data = report_input(
                study,
                prediction,
                predictor,
                estimate,
                reviews,
                patient,
            )
            st.session_state[key] = (render_pdf(data), secondary_capture_bytes(data))
    ready = st.session_state.get(key)
    downloads = [
        ("PDF report", "ich-review-report.pdf", "application/pdf", "pdf"),
        ("Key image (DICOM)", "ich-review-key-image.dcm", "application/dicom", "dcm"),
    ]
    for col, data, (label, name, mime, kind) in zip(
        cols[1:3], ready or (b"", b""), downloads, strict=True
    ):
        col.download_button(
            label,
            data,
            file_name=name,
            mime=mime,
            disabled=ready is None,
            key=f"{kind}-{uid}",
            width="stretch",
        )
    cols[3].caption(
        "The PDF names the patient only when identities are shown. The DICOM object carries "
        "the study's patient data so that a PACS can file it."
    )
