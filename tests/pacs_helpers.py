"""Helpers of the PACS tests: put studies into the test Orthanc, make modified copies of real
slices (a dated CT, an MR, a damaged CT), wait for Orthanc to call a study stable, and a proxy
in front of it (HTTPS, or cutting WADO-RS transfers short)."""

from __future__ import annotations

import io
import ssl
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
from pydicom.uid import MRImageStorage, generate_uid

from core.pacs.orthanc_local import LocalOrthanc


def zip_slices(path: Path) -> list[bytes]:
    with zipfile.ZipFile(path) as zf:
        return [zf.read(n) for n in sorted(zf.namelist()) if not n.endswith("/")]


def study_uid_of(path: Path) -> str:
    first = zip_slices(path)[0]
    return str(pydicom.dcmread(io.BytesIO(first), stop_before_pixels=True).StudyInstanceUID)


def upload_zip(server: LocalOrthanc, path: Path) -> str:
    """Every slice of a study zip into Orthanc; the study's UID."""
    for data in zip_slices(path):
        server.upload(data)
    return study_uid_of(path)


def upload_all(server: LocalOrthanc, slices: list[bytes]) -> None:
    for data in slices:
        server.upload(data)


def modified_copy(
    path: Path,
    *,
    seed: str,
    modality: str | None = None,
    study_date: str | None = None,
    description: str | None = None,
    damage_pixels: bool = False,
    n_slices: int | None = None,
) -> tuple[str, list[bytes]]:
    """A new study made of the zip's real slices with new (valid) UIDs, and the changes
    asked for; (its StudyInstanceUID, the slices' bytes)."""
    study_uid = generate_uid(entropy_srcs=[seed, "study"])
    series_uid = generate_uid(entropy_srcs=[seed, "series"])
    out = []
    for i, data in enumerate(zip_slices(path)[:n_slices]):
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = f"PAT-{seed}"
        ds.PatientName = f"Doe^{seed}"
        if modality is not None:
            ds.Modality = modality
            if modality == "MR":
                ds.SOPClassUID = MRImageStorage
                ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        if study_date is not None:
            ds.StudyDate = study_date
        if description is not None:
            ds.StudyDescription = description
        if damage_pixels:
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return study_uid, out


def wait_stable(server: LocalOrthanc, n_studies: int, timeout_s: float = 60.0) -> None:
    """Until Orthanc holds ``n_studies`` studies, all stable (its change feed then lists a
    StableStudy for each)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ids = server.get_json("/studies")
        assert isinstance(ids, list)
        if len(ids) >= n_studies and all(
            server.get_json(f"/studies/{i}").get("IsStable")  # type: ignore[union-attr]
            for i in ids
        ):
            return
        time.sleep(0.3)
    raise AssertionError(f"Orthanc did not hold {n_studies} stable studies in {timeout_s} s")


class _Proxy(BaseHTTPRequestHandler):
    """Forwards GETs to Orthanc (as a hospital's HTTPS front end would); when the server says
    so, WADO-RS series retrievals get half their body, then the connection closes (a transfer
    cut short mid-way)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        target = self.server.target + self.path  # type: ignore[attr-defined]
        keep = ("authorization", "accept")
        headers = {k: v for k, v in self.headers.items() if k.lower() in keep}
        try:
            with urllib.request.urlopen(urllib.request.Request(target, headers=headers)) as resp:
                status, ctype, body = resp.status, resp.headers["Content-Type"], resp.read()
        except urllib.error.HTTPError as exc:
            status, ctype, body = exc.code, exc.headers.get("Content-Type", "text/plain"), b""
        cut = self.server.cut and "/series/" in self.path.split("?")[0]  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if cut else body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextmanager
def proxy(
    server: LocalOrthanc, *, cut_retrievals: bool = False, tls: tuple[Path, Path] | None = None
) -> Iterator[str]:
    """The DICOMweb URL of a proxy in front of ``server``: over HTTPS with ``tls`` (certificate,
    key), cutting series retrievals short with ``cut_retrievals``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    httpd.target = server.url  # type: ignore[attr-defined]
    httpd.cut = cut_retrievals  # type: ignore[attr-defined]
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{httpd.server_address[1]}/dicom-web"
    finally:
        httpd.shutdown()
        httpd.server_close()
