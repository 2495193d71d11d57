"""The real Orthanc (Debian's orthanc + orthanc-dicomweb) the PACS tests talk to: one per test
session, on a free loopback port, with a basic-auth user; emptied before each test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.pacs.dicomweb import PacsSettings
from core.pacs.orthanc_local import LocalOrthanc, OrthancUnavailable


@pytest.fixture(scope="session")
def orthanc() -> Iterator[LocalOrthanc]:
    server = LocalOrthanc(username="ich-test", password=secrets.token_hex(8))
    try:
        server.start()
    except OrthancUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def pacs(orthanc: LocalOrthanc) -> LocalOrthanc:
    """The session's Orthanc, empty."""
    orthanc.delete_all()
    return orthanc


@pytest.fixture
def settings(pacs: LocalOrthanc) -> PacsSettings:
    return PacsSettings(
        pacs.dicomweb_url, username=pacs.username or "", password=pacs.password or ""
    )


@pytest.fixture(scope="session")
def few_zips(study_zips: list[Path]) -> list[Path]:
    """The three smallest real studies: enough to show 'each once', quick on two cores."""
    return sorted(study_zips, key=lambda p: p.stat().st_size)[:3]
