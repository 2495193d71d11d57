"""The door of the dashboard: loopback as before, the hospital's login beyond it, or a refusal.

core.serving decides from Streamlit's ``server.address``, the ``[auth]`` section of
``.streamlit/secrets.toml`` and ``ICH_ALLOW_OPEN``; this view shows the decision. When a login
is configured, the reviewer's name is the login's (Session.login_name), never typed.
"""

from __future__ import annotations

from collections.abc import Mapping

import streamlit as st
from streamlit import config as st_config

from core.serving import allow_open_from_env, decide, login_provider, missing_login_keys
from dashboard.state import Session


def _auth_section() -> Mapping[str, object] | None:
    """The secrets' ``[auth]`` table, or None when there are no secrets (or none readable:
    Streamlit logs a secrets.toml that cannot be parsed, and a login is then not configured)."""
    try:
        if not st.secrets.load_if_toml_exists():
            return None
        auth = st.secrets.get("auth")
    except (FileNotFoundError, KeyError):
        return None
    return auth if isinstance(auth, Mapping) else None


def _login_name() -> str:
    """The signed-in person as the identity provider names them (name, else e-mail, else id)."""
    for claim in ("name", "email", "preferred_username", "sub"):
        value = st.user.get(claim)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def render(sess: Session) -> None:
    """Let the person in, or stop the script with the reason on the page."""
    auth = _auth_section()
    provider = login_provider(auth)
    if auth is not None and provider is None:
        st.warning(
            "The [auth] section of .streamlit/secrets.toml is incomplete ("
            + ", ".join(missing_login_keys(auth))
            + " missing): no login is used."
        )
    access = decide(
        st_config.get_option("server.address"), provider is not None, allow_open_from_env()
    )
    sess.login_name = ""
    if access.mode == "refused":
        st.title("ICH review")
        st.error(access.message)
        st.stop()
    if access.mode == "open":
        st.warning(access.message, icon="⚠️")
    if access.mode != "login":
        return
    if st.user.get("is_logged_in") is not True:
        st.title("ICH review")
        st.info(
            "This reading room is for the hospital's staff: sign in with your hospital account. "
            "Reviews are signed with the name of the account."
        )
        if st.button("Log in", type="primary"):
            st.login(provider or None)
        st.stop()
    sess.login_name = _login_name() or "(signed-in user without a name)"
    with st.sidebar:
        st.caption(f"Signed in as {sess.login_name}")
        st.button("Log out", on_click=st.logout)
