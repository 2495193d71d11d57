"""The local Orthanc: two at once on different free ports, the DICOMweb plugin loaded, basic
auth enforced, and nothing left behind once stopped."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from core.pacs.orthanc_local import LocalOrthanc


def test_two_servers_on_free_ports_stop_cleanly() -> None:
    with LocalOrthanc() as a, LocalOrthanc() as b:
        assert a.port != b.port
        for server in (a, b):
            assert "dicom-web" in server.get_json("/plugins")  # type: ignore[operator]
            assert server.get_json("/dicom-web/studies") == []
        proc, storage = a.process, Path(a._tmp.name)  # type: ignore[union-attr]
        assert (storage / "orthanc.json").exists()
    assert proc is not None and proc.poll() is not None  # exited, not left running
    assert not storage.exists()  # its temporary storage is gone


def test_basic_auth_is_enforced(orthanc: LocalOrthanc) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(orthanc.url + "/dicom-web/studies", timeout=5)
    assert err.value.code == 401
    assert orthanc.get_json("/dicom-web/studies") is not None  # with the user: allowed
