"""Who gets in (core.serving through dashboard/views/access.py), with AppTest; and the model
panel's "unverified model" (core.model.integrity)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.util import patch_config_options

from core.dicom.study import load_studies

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
TIMEOUT = 180
AUTH = {
    "redirect_uri": "https://reading-room.example/oauth2callback",
    "cookie_secret": "a-long-random-string-for-the-test-only-0123456789",
    "client_id": "ich-review",
    "client_secret": "test-secret",
    "server_metadata_url": "https://login.example/.well-known/openid-configuration",
}


def _run(at: AppTest, address: str | None = "127.0.0.1") -> AppTest:
    with patch_config_options({"server.address": address}):
        at.run()
    assert not at.exception, at.exception
    return at


def _app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def test_loopback_runs_as_before_without_a_login(app_env: Path) -> None:
    at = _run(_app())
    assert at.sidebar.file_uploader, "the upload is offered"
    assert not any("Not started" in e.value for e in at.error)
    assert not any(b.label == "Log in" for b in at.button)


@pytest.mark.parametrize("address", ["0.0.0.0", "10.1.2.3", None])
def test_beyond_loopback_without_a_login_it_refuses_to_start(
    app_env: Path, address: str | None
) -> None:
    at = _run(_app(), address)
    message = " ".join(e.value for e in at.error)
    assert "Not started" in message and "no login is configured" in message
    assert "ICH_ALLOW_OPEN=1" in message and ".streamlit/secrets.toml" in message
    assert not at.sidebar.file_uploader and not at.main.get("dataframe")  # nothing else shown


def test_beyond_loopback_the_flag_serves_it_open_with_a_warning(
    app_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICH_ALLOW_OPEN", "1")
    at = _run(_app(), "10.1.2.3")
    assert any("WITHOUT A LOGIN" in w.value for w in at.warning)
    assert at.sidebar.file_uploader and not any("Not started" in e.value for e in at.error)


def test_a_half_written_login_is_named_and_not_used(app_env: Path) -> None:
    at = _app()
    at.secrets["auth"] = {k: v for k, v in AUTH.items() if k != "client_secret"}
    _run(at, "10.1.2.3")
    assert any("client_secret missing" in w.value for w in at.warning)
    assert any("Not started" in e.value for e in at.error)  # beyond loopback: still refused


def test_with_a_login_configured_it_asks_for_the_login_first(app_env: Path) -> None:
    at = _app()
    at.secrets["auth"] = AUTH
    at.user = {"is_logged_in": False}
    _run(at, "10.1.2.3")
    assert any(b.label == "Log in" for b in at.button)
    assert any("hospital account" in i.value for i in at.info)
    assert not at.sidebar.file_uploader  # no study before the login


def test_the_login_signs_the_review_and_the_field_is_read_only(
    app_env: Path, small_zip: Path
) -> None:
    at = _app()
    at.secrets["auth"] = AUTH
    at.user = {"is_logged_in": True, "name": "Dr Login", "email": "login@example.org"}
    at.query_params["reviewer"] = "Mallory"  # a remembered name does not win over the login
    _run(at, "10.1.2.3")
    assert any("Signed in as Dr Login" in c.value for c in at.sidebar.caption)
    at.sidebar.file_uploader[0].set_value(
        (small_zip.name, small_zip.read_bytes(), "application/zip")
    )
    _run(at, "10.1.2.3")
    uid = load_studies(small_zip)[0].study_instance_uid
    field = at.text_input(key=f"reviewer-login-{uid}")
    assert field.value == "Dr Login" and field.proto.disabled
    at.radio(key=f"overall-{uid}").set_value("uncertain")
    next(b for b in at.button if b.label == "Save review").click()
    _run(at, "10.1.2.3")
    assert any("Latest review: **uncertain** by Dr Login" in s.value for s in at.success)
    # The login's name is not put in the address; the typed one there is not used.
    assert at.query_params["reviewer"] in ("Mallory", ["Mallory"])


def test_the_model_panel_names_an_unverified_model(app_env: Path) -> None:
    at = _run(_app())  # the tiny test model, allowed by ICH_ALLOW_UNVERIFIED=1 (app_env)
    errors = " ".join(e.value for e in at.sidebar.error)
    assert "Unverified model" in errors and "not one of the models shipped" in errors
    assert any("— unverified model" in e.label for e in at.sidebar.expander)


def test_without_the_flag_an_unverified_model_is_not_loaded(
    app_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ICH_ALLOW_UNVERIFIED")
    at = _run(_app())
    warnings = " ".join(w.value for w in at.sidebar.warning)
    assert "is not verified" in warnings and "ICH_ALLOW_UNVERIFIED=1" in warnings
