"""core.serving: who may use the dashboard, decided from the address, the login and the flag."""

from __future__ import annotations

import pytest

from core.serving import allow_open_from_env, decide, is_loopback, login_provider

SHARED = {"redirect_uri": "https://rr.example/oauth2callback", "cookie_secret": "x" * 40}
PROVIDER = {"client_id": "a", "client_secret": "b", "server_metadata_url": "https://m.example"}


@pytest.mark.parametrize(
    "address, loopback",
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("", False),
        (None, False),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("reading-room.hospital.example", False),
    ],
)
def test_loopback_addresses(address: str | None, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_a_login_needs_every_key() -> None:
    assert login_provider({**SHARED, **PROVIDER}) == ""
    assert login_provider({**SHARED, "hospital": PROVIDER}) == "hospital"
    assert login_provider({**SHARED, "a": PROVIDER, "b": PROVIDER}) is None  # which one?
    assert login_provider({**SHARED, "my_idp": PROVIDER}) is None  # streamlit: no underscore
    for missing in (*SHARED, *PROVIDER):
        auth = {k: v for k, v in {**SHARED, **PROVIDER}.items() if k != missing}
        assert login_provider(auth) is None, missing
    assert login_provider({**SHARED, **PROVIDER, "client_secret": ""}) is None


def test_the_decision() -> None:
    assert decide("127.0.0.1", auth=False, allow_open=False).mode == "local"
    assert decide("127.0.0.1", auth=True, allow_open=False).mode == "login"
    assert decide("10.1.2.3", auth=True, allow_open=True).mode == "login"  # login wins
    refused = decide(None, auth=False, allow_open=False)
    assert refused.mode == "refused" and "every interface" in refused.message
    assert "ICH_ALLOW_OPEN=1" in refused.message and "127.0.0.1" in refused.message
    opened = decide("10.1.2.3", auth=False, allow_open=True)
    assert opened.mode == "open" and "WITHOUT A LOGIN" in opened.message


def test_the_flag_is_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, allowed in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv("ICH_ALLOW_OPEN", value)
        assert allow_open_from_env() is allowed
    monkeypatch.delenv("ICH_ALLOW_OPEN")
    assert not allow_open_from_env()
