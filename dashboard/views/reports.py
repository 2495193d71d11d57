"""Report downloads for the open study: a one-page PDF, a DICOM Secondary Capture and the DICOM
SEG of the bleed outline for PACS. Built on request (a Grad-CAM and the bleed estimate are
computed), then offered for download."""

from __future__ import annotations

import streamlit as st

from core.dicom.study import Study
from core.inference.predictor import Predictor, StudyPrediction
from core.reports.pdf import render_pdf, report_input
from core.reports.secondary_capture import secondary_capture_bytes
from core.reports.segmentation import report_segmentation
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
    cols = st.columns([2, 2, 2, 2, 3])
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
            seg, why_not = report_segmentation(data)
            st.session_state[key] = (render_pdf(data), secondary_capture_bytes(data), seg, why_not)
    ready = st.session_state.get(key)
    pdf, key_image, seg, why_not = ready or (None, None, None, "")
    downloads = [
        ("PDF report", pdf, "ich-review-report.pdf", "application/pdf", "pdf"),
        ("Key image (DICOM)", key_image, "ich-review-key-image.dcm", "application/dicom", "dcm"),
        ("Download DICOM SEG", seg, "ich-review-bleed-seg.dcm", "application/dicom", "seg"),
    ]
    for col, (label, content, name, mime, kind) in zip(cols[1:4], downloads, strict=True):
        col.download_button(
            label,
            content or b"",
            file_name=name,
            mime=mime,
            disabled=content is None,
            key=f"{kind}-{uid}",
            width="stretch",
        )
    cols[3].caption(
        why_not
        or "The bleed outline on every slice, for a PACS viewer to overlay (research use only)."
    )
    cols[4].caption(
        "The PDF names the patient only when identities are shown. The DICOM objects carry "
        "the study's patient data so that a PACS can file them."
    )
