"""What model is loaded, and the research-use notice."""

from __future__ import annotations

import streamlit as st


def render() -> None:
    st.caption("**Research use only — not a medical device.**")
    st.info(
        "No trained model is installed yet: the viewer works, but no hemorrhage probabilities "
        "are shown. Random weights are never used in their place."
    )
