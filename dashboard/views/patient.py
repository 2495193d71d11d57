"""The patient view: when the worklist holds several studies of the open study's patient, their
study-level P(any) and estimated bleed volume on a timeline, with hematoma expansion flagged."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.dicom.study import Study
from core.imaging.volume import VOLUME_NOTICE
from core.inference.predictor import Predictor
from core.review.monitoring import (
    DEFINITION,
    TimePoint,
    acquired_at,
    changes,
    group_by_patient,
    timeline,
)
from dashboard import resources
from dashboard.state import Session


def _points(sess: Session, predictor: Predictor | None, uids: list[str]) -> list[TimePoint]:
    points = []
    for uid in uids:
        study = sess.studies[uid]
        prediction = sess.predictions.get(uid)
        volume = None
        if prediction is not None and predictor is not None:
            series = study.default_series
            volume = resources.bleed_estimate(
                predictor, prediction.weights_identity, series, prediction, series.pixel_hash
            ).volume_ml
        points.append(
            TimePoint(
                uid,
                acquired_at(study.study_date, study.study_time),
                prediction.study_scores["any"] if prediction is not None else None,
                volume,
            )
        )
    return timeline(points)


def _chart(points: list[TimePoint], labels: dict[str, str]) -> go.Figure:
    x = [labels[p.study_instance_uid] for p in points]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Scatter(x=x, y=[p.p_any for p in points], name="P(any), study", mode="lines+markers"),
        secondary_y=False,
    )
    fig.add_trace(
        go.Bar(x=x, y=[p.volume_ml for p in points], name="estimated volume (mL)", opacity=0.5),
        secondary_y=True,
    )
    fig.update_layout(
        template="plotly_dark",
        height=280,
        margin=dict(l=10, r=10, t=30, b=10),
        title=dict(text="This patient's studies", font=dict(size=14)),
        legend=dict(orientation="h", y=1.2, x=1, xanchor="right"),
    )
    fig.update_yaxes(title_text="P(any)", range=[0, 1], secondary_y=False)
    fig.update_yaxes(title_text="mL", rangemode="tozero", secondary_y=True)
    return fig


def render(sess: Session, predictor: Predictor | None, study: Study, patient: str) -> None:
    """``patient``: the label the page shows for the open study (pseudonym or identity)."""
    groups = group_by_patient({uid: s.patient_id for uid, s in sess.studies.items()})
    uids = groups.get(study.patient_id)
    if not uids:
        return
    with st.expander(f"Patient timeline: {patient} · {len(uids)} studies", expanded=True):
        points = _points(sess, predictor, uids)
        labels = {}
        for i, p in enumerate(points, 1):
            when = p.acquired.strftime("%Y-%m-%d %H:%M") if p.acquired else "no date"
            labels[p.study_instance_uid] = f"{i}. {when}"
        st.plotly_chart(_chart(points, labels), key=f"timeline-{uids[0]}", theme=None)
        for ch in changes(points):
            if ch.growth_ml is None:
                continue
            rel = f" ({ch.growth_relative:+.0%})" if ch.growth_relative is not None else ""
            text = (
                f"{labels[ch.before.study_instance_uid]} → {labels[ch.after.study_instance_uid]}: "
                f"{ch.before.volume_ml:.1f} → {ch.after.volume_ml:.1f} mL, "
                f"{ch.growth_ml:+.1f} mL{rel}"
            )
            if ch.expansion:
                st.error(f"**Possible hematoma expansion.** {text}")
            else:
                st.write(text)
        st.caption(f"Expansion: {DEFINITION}. {VOLUME_NOTICE}")
