"""The radiologist's review: per-label agree/disagree, an overall call, notes, reviewer.

Saved to the review database (append-only: a later review adds to the history); saving also
puts the study on the shared worklist. The study's report downloads as JSON.
"""

from __future__ import annotations

import json

import streamlit as st

from core.dicom.study import Study
from core.errors import ICHError
from core.inference.predictor import StudyPrediction
from core.labels import LABELS
from core.reports.study_report import study_report
from core.review.pseudonym import Pseudonymizer
from core.review.store import OVERALL_CHOICES, Review, ReviewStore, StudyRecord
from dashboard.state import Session
from dashboard.text import plain

_CHOICES = ("—", "agree", "disagree")
#: The reviewer's name is kept in the page's address (``?reviewer=``), so that a reload or a
#: bookmark keeps it; it is a member of staff's name, never a patient's.
REVIEWER_PARAM = "reviewer"


def _answers(review: Review) -> str:
    """The per-label answers of a saved review, in label order ("" when none was given)."""
    given = [
        f"{label} {review.label_agreement[label]}"
        for label in LABELS
        if (review.label_agreement or {}).get(label)
    ]
    return " · ".join(given)


def _line(r: Review) -> str:
    answers = _answers(r)
    return (
        f"- {r.created_at:%Y-%m-%d %H:%M} · {plain(r.reviewer)} · **{r.overall}**"
        + (f" · {answers}" if answers else "")
        + (f" — {plain(r.notes)}" if r.notes else "")
    )


def _record(study: Study, prediction: StudyPrediction | None) -> StudyRecord:
    series = study.default_series
    return StudyRecord(
        study_instance_uid=study.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        patient_id=study.patient_id,
        patient_name=study.patient_name,
        study_date=study.study_date.isoformat() if study.study_date else None,
        n_slices=series.n_slices,
        model_identity=prediction.weights_identity if prediction is not None else None,
        study_scores=dict(prediction.study_scores) if prediction is not None else None,
    )


def render(
    sess: Session,
    store: ReviewStore,
    names: Pseudonymizer,
    study: Study,
    prediction: StudyPrediction | None,
) -> None:
    uid = study.study_instance_uid
    history = store.history(uid)
    st.subheader("Review")
    if uid in sess.notices:
        st.success(sess.notices.pop(uid))
    if history:
        last = history[-1]
        answers = _answers(last)
        st.success(
            f"Latest review: **{last.overall}** by {plain(last.reviewer)} on "
            f"{last.created_at:%Y-%m-%d %H:%M} UTC"
            + (f" — {plain(last.notes)}" if last.notes else "")
            + (f"  \nPer label: {answers}" if answers else "")
        )
    with st.form(key=f"review-{uid}"):
        cols = st.columns(3)
        agreement: dict[str, str | None] = {}
        for i, label in enumerate(LABELS):
            score = (
                f" (model {prediction.study_scores[label]:.2f})" if prediction is not None else ""
            )
            pick = cols[i % 3].radio(
                f"{label}{score}", _CHOICES, horizontal=True, key=f"agree-{uid}-{label}"
            )
            agreement[label] = None if pick == "—" else pick
        overall = st.radio(
            "Overall call", OVERALL_CHOICES, index=None, horizontal=True, key=f"overall-{uid}"
        )
        notes = st.text_area("Notes", key=f"notes-{uid}")
        if sess.login_name:  # the login says who is reviewing: shown, not editable
            st.text_input(
                "Reviewer",
                value=sess.login_name,
                key=f"reviewer-login-{uid}",
                disabled=True,
                help="The name of the account you signed in with.",
            )
            reviewer = sess.login_name
        else:
            remembered = sess.reviewer or st.query_params.get(REVIEWER_PARAM, "")
            reviewer = st.text_input("Reviewer", value=remembered, key=f"reviewer-{uid}")
        submitted = st.form_submit_button("Save review", type="primary")
    if submitted and overall is None:
        st.error("Not saved: choose an overall call (hemorrhage, no hemorrhage or uncertain).")
    elif submitted:
        try:
            saved = store.add_review(
                Review(
                    study_instance_uid=uid,
                    series_instance_uid=study.default_series.series_instance_uid,
                    reviewer=reviewer,
                    overall=str(overall),
                    label_agreement=agreement,
                    notes=notes,
                    model_identity=prediction.weights_identity if prediction else None,
                    study_scores=dict(prediction.study_scores) if prediction else None,
                )
            )
            store.save_study(_record(study, prediction))
        except ValueError as exc:
            st.error(f"Not saved: {exc}.")
        except ICHError as exc:
            st.error(str(exc))
        else:
            if not sess.login_name:
                sess.reviewer = reviewer
                st.query_params[REVIEWER_PARAM] = reviewer
            sess.notices[uid] = f"Review saved ({saved.created_at:%Y-%m-%d %H:%M:%S} UTC)."
            st.rerun()  # the worklist, drawn above, shows the new review at once
    if len(history) > 1:
        with st.expander(f"History ({len(history)} reviews)"):
            for r in reversed(history):
                st.markdown(_line(r))
    report = study_report(study, prediction, history, names, show_identity=sess.show_identity)
    st.download_button(
        "Download report (JSON)",
        json.dumps(report, indent=2),
        file_name=f"report-{report['report_id']}.json",
        mime="application/json",
        key=f"report-{uid}",
    )


def render_saved(store: ReviewStore, uid: str) -> None:
    """A study saved in an earlier session: its reviews, and how to see its images again."""
    st.info("This study was saved in an earlier session. Upload its zip again to see the images.")
    for r in reversed(store.history(uid)):
        st.markdown(_line(r))
