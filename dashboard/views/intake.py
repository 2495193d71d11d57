"""Upload of DICOM zips (or the bundled demo study) into the user's session."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.errors import ICHError
from core.study import load_studies
from dashboard.state import Session

DEMO_ZIP = Path(__file__).resolve().parents[1] / "demo" / "ID_4d28912ba6.zip"


def _add(sess: Session, label: str, source: bytes | Path) -> None:
    bar = st.progress(0.0, text=f"Reading {label}…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Reading {label}: {done}/{total} files")

    try:
        studies = load_studies(source, progress=progress)
    except ICHError as exc:
        sess.messages.append((label, "error", str(exc)))
        return
    finally:
        bar.empty()
    for study in studies:
        sess.studies[study.study_instance_uid] = study
        sess.messages += [(label, "warning", w) for w in study.warnings]
        sess.open_uid = sess.open_uid or study.study_instance_uid


def render(sess: Session) -> None:
    st.subheader("Studies")
    uploads = st.file_uploader(
        "DICOM zips",
        type=["zip"],
        accept_multiple_files=True,
        key="uploads",
        help="One or more zips, each holding one or more CT studies (files at any depth).",
    )
    seen = st.session_state.setdefault("seen_uploads", set())
    for up in uploads or []:
        if up.file_id in seen:
            continue
        seen.add(up.file_id)
        _add(sess, up.name, up.getvalue())
    if st.button("Open the demo study", width="stretch"):
        _add(sess, "demo study", DEMO_ZIP)
    for label, level, text in sess.messages[-8:]:
        (st.error if level == "error" else st.warning)(f"**{label}**: {text}")
