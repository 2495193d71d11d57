"""Intake: upload one or more DICOM zips (or open the bundled demo study).

A bad file gets its message next to its name; the good ones of the same upload still load.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.dicom.study import load_studies
from core.errors import ICHError
from dashboard.state import Session
from dashboard.text import plain

DEMO_ZIP = Path(__file__).resolve().parents[1] / "demo" / "ID_4d28912ba6.zip"


def add_source(sess: Session, label: str, source: bytes | Path) -> None:
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
        uid = study.study_instance_uid
        sess.studies[uid] = study
        if uid not in sess.predictions and uid not in sess.pending:
            sess.pending.append(uid)
        sess.messages += [(label, "warning", w) for w in study.warnings]
    noun = "study" if len(studies) == 1 else "studies"
    sess.messages.append((label, "success", f"{len(studies)} {noun} loaded."))
    sess.open_uid = studies[0].study_instance_uid


def render(sess: Session) -> None:
    uploads = st.file_uploader(
        "Upload DICOM zips",
        type=["zip"],
        accept_multiple_files=True,
        key="uploads",
        help="One or more zips, each holding one or more CT studies (files at any depth).",
    )
    for up in uploads or []:
        if up.file_id not in sess.seen_uploads:
            sess.seen_uploads.add(up.file_id)
            add_source(sess, up.name, up.getvalue())
    if st.button("Open the demo study", width="stretch", key="open-demo"):
        add_source(sess, "demo study", DEMO_ZIP)
    for label, level, text in sess.messages[-10:]:
        show = {"error": st.error, "warning": st.warning, "success": st.success}[level]
        show(f"**{plain(label)}**: {plain(text)}")
