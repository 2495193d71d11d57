"""The worklist: one row per study (this session's and those saved before), most suspicious
first; selecting a row opens the study."""

from __future__ import annotations

from collections.abc import Collection

import streamlit as st

from core.review.pseudonym import Pseudonymizer
from core.review.store import ReviewStore
from core.review.worklist import build_worklist, worklist_csv
from dashboard.state import Session


def render(
    sess: Session,
    store: ReviewStore,
    names: Pseudonymizer,
    threshold: float | None = None,
    watched: Collection[str] = (),
) -> None:
    """``threshold``: the model's operating point for the study P(any) (from its card), or None;
    ``watched``: studies the PACS watcher scored (their images are on the PACS)."""
    head = st.columns([4, 2, 2])
    head[0].subheader("Worklist")
    # Read before the rows are built, so that the rows follow the toggle in the same click.
    sess.show_identity = head[1].toggle(
        "Show patient identity", value=sess.show_identity, key="show-identity"
    )
    scores = {uid: p.study_scores for uid, p in sess.predictions.items()}
    entries = build_worklist(
        sess.studies.values(),
        scores,
        store.studies(),
        store.latest_by_study(),
        names,
        show_identity=sess.show_identity,
        model_status={uid: p.model_status for uid, p in sess.predictions.items()},
    )
    head[2].download_button(
        "Export CSV",
        worklist_csv(entries),
        file_name="worklist.csv",
        mime="text/csv",
        disabled=not entries,
        key="export-worklist",
    )
    if not entries:
        st.info("Upload a DICOM zip or open the demo study to begin.")
        return
    table = {
        "Patient": [e.patient for e in entries],
        "Study date": [e.study_date or "—" for e in entries],
        "Slices": [e.n_slices for e in entries],
        "P(any)": [e.p_any for e in entries],
        "Flag": [
            "above operating point"
            if threshold is not None and e.p_any is not None and e.p_any >= threshold
            else ""
            for e in entries
        ],
        "Top subtype": [
            f"{e.top_subtype} {e.p_top_subtype:.2f}" if e.top_subtype else "—" for e in entries
        ],
        "Review": [e.review for e in entries],
        **(
            {"Model": [e.model if e.model != "verified" else "" for e in entries]}
            if any(e.model not in ("", "verified") for e in entries)
            else {}
        ),
        "Source": [
            "PACS watcher"
            if e.study_instance_uid in watched
            else ("PACS" if e.study_instance_uid in sess.from_pacs else "upload")
            for e in entries
        ],
        "Images": [
            "open"
            if e.in_session
            else ("fetch from PACS" if e.study_instance_uid in watched else "upload again")
            for e in entries
        ],
    }
    from_watcher = sum(e.study_instance_uid in watched for e in entries)
    st.caption(
        f"{len(entries)} {'study' if len(entries) == 1 else 'studies'}"
        + (f" · {from_watcher} scored on arrival by the PACS watcher" if from_watcher else "")
    )
    event = st.dataframe(
        table,
        hide_index=True,
        on_select="rerun",
        selection_mode="single-row",
        key="worklist",
        column_config={
            "P(any)": st.column_config.ProgressColumn(
                "P(any)", min_value=0.0, max_value=1.0, format="%.2f"
            )
        },
    )
    rows = tuple(event.selection.rows) if event is not None else ()
    # Apply a selection only when it changes, so opening a study elsewhere is not undone.
    if rows and rows != st.session_state.get("worklist-applied"):
        st.session_state["worklist-applied"] = rows
        sess.open_uid = entries[rows[0]].study_instance_uid
