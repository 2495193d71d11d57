"""Per-user session state. Streamlit keeps one per browser session: nothing here is shared
between users; only what a user saves to the worklist (core.review.store) is."""

from __future__ import annotations

from dataclasses import dataclass, field

import streamlit as st

from core.dicom.study import Study
from core.inference.predictor import StudyPrediction


@dataclass
class Session:
    studies: dict[str, Study] = field(default_factory=dict)  # by StudyInstanceUID
    predictions: dict[str, StudyPrediction] = field(default_factory=dict)  # by uid
    pending: list[str] = field(default_factory=list)  # uids waiting for the model
    messages: list[tuple[str, str, str]] = field(default_factory=list)  # (source, level, text)
    seen_uploads: set[str] = field(default_factory=set)
    from_pacs: set[str] = field(default_factory=set)  # uids fetched from the PACS
    open_uid: str | None = None
    show_identity: bool = False
    reviewer: str = ""
    #: The signed-in person's name when the dashboard requires a login (views/access.py):
    #: then it signs every review and the reviewer field cannot be edited.
    login_name: str = ""
    # Said once on the next run: a message that must survive the rerun that follows a save
    # (the rerun is what puts the saved review on the worklist above the form at once).
    notices: dict[str, str] = field(default_factory=dict)  # uid → text


def session() -> Session:
    if "ich" not in st.session_state:
        st.session_state["ich"] = Session()
    return st.session_state["ich"]
