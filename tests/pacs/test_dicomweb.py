"""DicomWebSource against the real Orthanc of the test session: QIDO-RS search and its filters,
WADO-RS retrieval through the upload loader (same pixels, same limits), STOW-RS, HTTPS, and a
plain message for each way the PACS can fail."""

from __future__ import annotations

import subprocess
from datetime import date
from pathlib import Path

import pytest
from pacs_helpers import modified_copy, proxy, upload_all, upload_zip, zip_slices

from core.dicom.archive import ArchiveLimits
from core.dicom.study import load_studies
from core.errors import NotCTStudyError, PacsError, UnsafeArchiveError
from core.pacs.dicomweb import DicomWebSource, PacsSettings
from core.pacs.orthanc_local import LocalOrthanc, free_port


def test_qido_finds_the_loaded_studies_and_filters_them(
    pacs: LocalOrthanc, settings: PacsSettings, few_zips: list[Path]
) -> None:
    rsna = {upload_zip(pacs, z) for z in few_zips}
    dated, slices = modified_copy(
        few_zips[0], seed="dated", study_date="20240105", description="CT HEAD WO CONTRAST"
    )
    upload_all(pacs, slices)
    mr, slices = modified_copy(few_zips[0], seed="mr", modality="MR", n_slices=1)
    upload_all(pacs, slices)
    source = DicomWebSource(settings)

    ct = {s.study_instance_uid: s for s in source.search_ct_studies()}
    assert set(ct) == rsna | {dated}  # the MR study is not listed among CT studies
    assert ct[dated].study_date == date(2024, 1, 5)
    assert ct[dated].n_instances == len(zip_slices(few_zips[0]))
    january = source.search_ct_studies(date_from=date(2024, 1, 1), date_to=date(2024, 1, 31))
    assert [s.study_instance_uid for s in january] == [dated]
    assert source.search_ct_studies(date_from=date(2023, 1, 1), date_to=date(2023, 12, 31)) == []
    assert [s.study_instance_uid for s in source.search_ct_studies(description="head wo")] == [
        dated
    ]
    assert source.search_ct_studies(description="chest") == []
    assert [s.study_instance_uid for s in source.search_ct_studies(modality="MR")] == [mr]
    # Patient data stays out of what a log line would show.
    assert "PAT-dated" not in repr(ct[dated]) and "Doe" not in repr(ct[dated])


def test_retrieve_gives_what_the_upload_loader_gives(
    pacs: LocalOrthanc, settings: PacsSettings, small_zip: Path
) -> None:
    uid = upload_zip(pacs, small_zip)
    seen: list[tuple[int, int]] = []
    fetched = DicomWebSource(settings).retrieve_study(
        uid, progress=lambda d, t: seen.append((d, t))
    )
    uploaded = load_studies(small_zip)[0]
    assert fetched.study_instance_uid == uploaded.study_instance_uid == uid
    a, b = fetched.default_series, uploaded.default_series
    assert a.pixel_hash == b.pixel_hash  # the same HU volume, bit for bit
    assert [s.sop_instance_uid for s in a.slices] == [s.sop_instance_uid for s in b.slices]
    assert a.spacing == pytest.approx(b.spacing)
    assert seen[-1] == (b.n_slices, b.n_slices)
    # Names inside the packed study are made here, never the server's.
    assert all(s.source.endswith(".dcm") and "/" not in s.source for s in a.slices)


def test_retrieve_applies_the_upload_limits(
    pacs: LocalOrthanc, settings: PacsSettings, small_zip: Path
) -> None:
    uid = upload_zip(pacs, small_zip)
    with pytest.raises(UnsafeArchiveError, match="more than the 10 allowed"):
        DicomWebSource(settings, ArchiveLimits(max_members=10)).retrieve_study(uid)
    with pytest.raises(UnsafeArchiveError, match="larger than the 1 MB allowed"):
        DicomWebSource(settings, ArchiveLimits(max_total_bytes=1 << 20)).retrieve_study(uid)


def test_unreachable_server_is_one_plain_message() -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(PacsError) as err:
        DicomWebSource(PacsSettings(url, "ann", "pw")).search_ct_studies()
    assert str(err.value).startswith(f"The PACS at {url} cannot be reached (connection refused)")


def test_wrong_password_is_a_plain_401(pacs: LocalOrthanc, small_zip: Path) -> None:
    uid = upload_zip(pacs, small_zip)
    wrong = PacsSettings(pacs.dicomweb_url, username=pacs.username or "", password="not-it")
    for call in (
        lambda s: s.search_ct_studies(),
        lambda s: s.retrieve_study(uid),
        lambda s: s.find_study(uid),
    ):
        with pytest.raises(PacsError, match=r"refused the login \(HTTP 401\)") as err:
            call(DicomWebSource(wrong))
        assert "not-it" not in str(err.value)


def test_a_study_that_is_not_ct_is_refused_before_download(
    pacs: LocalOrthanc, settings: PacsSettings, small_zip: Path
) -> None:
    mr, slices = modified_copy(small_zip, seed="mr-only", modality="MR", n_slices=1)
    upload_all(pacs, slices)
    with pytest.raises(NotCTStudyError) as err:
        DicomWebSource(settings).retrieve_study(mr)
    assert str(err.value) == (
        f"Study {mr} on the PACS holds MR images, not CT. The tool reads head CT only; "
        "choose the CT study."
    )


def test_a_transfer_cut_short_is_one_plain_message(
    pacs: LocalOrthanc, settings: PacsSettings, small_zip: Path
) -> None:
    uid = upload_zip(pacs, small_zip)
    with proxy(pacs, cut_retrievals=True) as url:
        cut = PacsSettings(url, username=settings.username, password=settings.password)
        source = DicomWebSource(cut)
        assert [s.study_instance_uid for s in source.search_ct_studies()] == [uid]  # QIDO whole
        with pytest.raises(PacsError) as err:
            source.retrieve_study(uid)
    message = str(err.value)
    assert message.startswith(f"The transfer of study {uid} from the PACS was cut short")
    assert "nothing was scored" in message and "Traceback" not in message


def test_credentials_are_never_shown() -> None:
    s = PacsSettings("https://ann:s3cret@pacs.example.org:8443/dicom-web/")
    assert (s.url, s.username, s.password) == (
        "https://pacs.example.org:8443/dicom-web",
        "ann",
        "s3cret",
    )
    assert "s3cret" not in repr(s) and "ann" not in repr(s)
    assert "s3cret" not in repr(DicomWebSource(s))
    assert s.server_root == "https://pacs.example.org:8443"
    env = {"ICH_DICOMWEB_URL": "http://h/dicom-web", "ICH_DICOMWEB_PASSWORD": "pw"}
    assert PacsSettings.from_env(env) == PacsSettings("http://h/dicom-web", password="pw")
    assert PacsSettings.from_env({}) is None
    with pytest.raises(PacsError, match="must start with http"):
        PacsSettings("ftp://pacs")


def test_https_with_the_hospitals_ca(
    tmp_path: Path, pacs: LocalOrthanc, settings: PacsSettings, small_zip: Path
) -> None:
    """HTTPS through a TLS front end (how hospitals expose a PACS) with a private CA."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    uid = upload_zip(pacs, small_zip)
    with proxy(pacs, tls=(cert, key)) as url:
        assert url.startswith("https://")
        login = {"username": settings.username, "password": settings.password}
        source = DicomWebSource(PacsSettings(url, ca_bundle=str(cert), **login))
        assert [s.study_instance_uid for s in source.search_ct_studies()] == [uid]
        assert source.retrieve_study(uid).default_series.n_slices == len(zip_slices(small_zip))
        with pytest.raises(PacsError, match="certificate this computer does not trust"):
            DicomWebSource(PacsSettings(url, **login)).search_ct_studies()
