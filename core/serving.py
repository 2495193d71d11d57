"""Who may use the dashboard: on this machine only, or behind the hospital's login.

Why: studies hold patient data and a saved review is signed with a reviewer's name. On the
loopback address only someone already on this machine reaches the app, as before. Served to a
reading room (``server.address`` anything else, or unset, which makes Streamlit listen on
every interface), anyone who reaches the port would be in, and "reviewer" would be whatever
they type. So beyond loopback the dashboard requires a login through the hospital's OpenID
Connect provider (Streamlit's ``st.login``, configured in ``.streamlit/secrets.toml``) and
signs reviews with the login's name; without a login configured it refuses to start, unless
``ICH_ALLOW_OPEN=1`` says an open reading room is intended (then every page says so).

This module decides; dashboard/views/access.py shows the decision (no streamlit here).

>>> decide("127.0.0.1", auth=False, allow_open=False).mode
'local'
>>> decide("10.1.2.3", auth=False, allow_open=False).mode
'refused'
>>> decide("10.1.2.3", auth=True, allow_open=False).mode
'login'
>>> decide("", auth=False, allow_open=True).mode
'open'
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

#: The environment variable that allows serving beyond loopback without a login.
ALLOW_OPEN_ENV = "ICH_ALLOW_OPEN"

#: What ``[auth]`` (or one ``[auth.NAME]`` provider) needs for st.login to work.
_SHARED_KEYS = ("redirect_uri", "cookie_secret")
_PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")

Mode = Literal["local", "login", "open", "refused"]


def is_loopback(address: str | None) -> bool:
    """Whether Streamlit listening on ``address`` is reachable from this machine only.

    >>> [is_loopback(a) for a in ("127.0.0.1", "localhost", "::1", "127.0.0.2")]
    [True, True, True, True]
    >>> [is_loopback(a) for a in ("", None, "0.0.0.0", "10.1.2.3", "reading-room.local")]
    [False, False, False, False, False]
    """
    if not address:
        return False  # Streamlit's default: every interface
    text = address.strip().strip("[]")
    if text.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def login_provider(auth: Mapping[str, object] | None) -> str | None:
    """The provider argument for ``st.login`` when ``auth`` (the secrets' ``[auth]`` table)
    is complete: "" for the unnamed provider (``st.login()``), the name of the one
    ``[auth.NAME]`` table, or None when no usable login is configured.

    >>> shared = {"redirect_uri": "https://x/oauth2callback", "cookie_secret": "s" * 32}
    >>> provider = {"client_id": "a", "client_secret": "b", "server_metadata_url": "https://m"}
    >>> login_provider({**shared, **provider}), login_provider({**shared, "hospital": provider})
    ('', 'hospital')
    >>> login_provider(shared) is None, login_provider(None) is None
    (True, True)
    """
    if not auth or not all(auth.get(k) for k in _SHARED_KEYS):
        return None
    if all(auth.get(k) for k in _PROVIDER_KEYS):
        return ""
    named = [
        name
        for name, table in auth.items()
        if isinstance(table, Mapping) and all(table.get(k) for k in _PROVIDER_KEYS)
    ]
    # Streamlit cannot use a provider name with an underscore (its docs say so).
    usable = [name for name in named if "_" not in name]
    return usable[0] if len(usable) == 1 else None


def missing_login_keys(auth: Mapping[str, object]) -> list[str]:
    """What an ``[auth]`` table lacks for a login (``[]`` when login_provider finds one), so a
    half-written secrets.toml is named instead of silently ignored.

    >>> missing_login_keys({"redirect_uri": "https://x/oauth2callback", "client_id": "a"})
    ['cookie_secret', 'client_secret', 'server_metadata_url']
    """
    if login_provider(auth) is not None:
        return []
    tables = [auth] + [t for t in auth.values() if isinstance(t, Mapping)]
    provider = max(tables, key=lambda t: sum(bool(t.get(k)) for k in _PROVIDER_KEYS))
    missing = [k for k in _SHARED_KEYS if not auth.get(k)]
    missing += [k for k in _PROVIDER_KEYS if not provider.get(k)]
    return missing or ["one provider (several [auth.NAME] tables, or a name with '_')"]


def allow_open_from_env() -> bool:
    """``ICH_ALLOW_OPEN=1`` (or true/yes): serve beyond loopback without a login."""
    return os.environ.get(ALLOW_OPEN_ENV, "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Access:
    """How this dashboard process lets people in, and what the page says about it."""

    mode: Mode
    address: str
    message: str = ""


def decide(address: str | None, auth: bool, allow_open: bool) -> Access:
    """``local`` (loopback, as before), ``login`` (a login is configured: always used),
    ``open`` (beyond loopback without a login, explicitly allowed) or ``refused``."""
    shown = address or "every interface (server.address unset)"
    if auth:
        return Access("login", shown)
    if is_loopback(address):
        return Access("local", shown)
    if allow_open:
        return Access(
            "open",
            shown,
            f"Served on {shown} WITHOUT A LOGIN ({ALLOW_OPEN_ENV}=1): anyone who reaches this "
            "port can see the studies, and reviewer names are not checked.",
        )
    return Access(
        "refused",
        shown,
        f"Not started: this dashboard is served on {shown}, beyond this machine, and no login "
        "is configured. Studies hold patient data and reviews are signed by name, so a reading "
        "room needs the hospital's login: add an [auth] section for its OpenID Connect "
        "provider to .streamlit/secrets.toml (see the README, 'Serving a reading room'). To "
        "serve this machine only, use --server.address 127.0.0.1. To serve without a login "
        f"anyway, start it with {ALLOW_OPEN_ENV}=1.",
    )
