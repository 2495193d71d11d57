"""Streamlit custom components kept in this repository (hand-written frontends, no build)."""
