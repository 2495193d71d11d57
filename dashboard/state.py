"""Per-user session state: the studies this user opened. Nothing here is shared between users."""

from __future__ import annotations

from dataclasses import dataclass, field

import streamlit as st

from core.study import Study


@dataclass
class Session:
    studies: dict[str, Study] = field(default_factory=dict)  # by StudyInstanceUID
    messages: list[tuple[str, str, str]] = field(default_factory=list)  # (file, level, text)
    open_uid: str | None = None
    show_identity: bool = False


def session() -> Session:
    if "ich" not in st.session_state:
        st.session_state["ich"] = Session()
    return st.session_state["ich"]
