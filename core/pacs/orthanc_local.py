"""A throw-away Orthanc on this machine, for the tests and for trying the PACS flow.

Why: the DICOMweb code is only worth something against a real server. Debian's ``orthanc`` and
``orthanc-dicomweb`` packages give one; this module starts it on the loopback interface with a
configuration and storage of its own (a temporary folder unless one is given), on a free port
(no clash with another Orthanc or another test run), with the DICOMweb plugin loaded, its DICOM
network port off, optionally behind a basic-auth user, and stops it cleanly. (HTTPS is left
to a proxy in front, as hospitals usually do: Debian's Orthanc 1.10 resets TLS connections
after the handshake with OpenSSL 3.)

``python -m core.pacs.orthanc_local [--port N] [--user U --password-env VAR] [--storage DIR]``
prints the URLs and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

#: Where Debian's packages put the server and the DICOMweb plugin.
ORTHANC_EXE = "/usr/sbin/Orthanc"
PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7",
)
#: Seconds without a new instance after which Orthanc calls a study stable (its change feed
#: then reports StableStudy). Orthanc's default is 60; a scanner sends a study in seconds.
DEFAULT_STABLE_AGE = 3


class OrthancUnavailable(RuntimeError):
    """Orthanc or its DICOMweb plugin is not installed, or the server did not start."""


def orthanc_executable() -> str:
    exe = shutil.which("Orthanc") or (ORTHANC_EXE if Path(ORTHANC_EXE).exists() else None)
    if exe is None:
        raise OrthancUnavailable(
            "Orthanc is not installed: `apt-get install orthanc orthanc-dicomweb` "
            "(`.ci/setup test` does)."
        )
    return exe


def dicomweb_plugin() -> str:
    for path in PLUGIN_CANDIDATES:
        if Path(path).exists():
            return path
    raise OrthancUnavailable(
        "Orthanc's DICOMweb plugin is not installed: `apt-get install orthanc-dicomweb`."
    )


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalOrthanc:
    """One Orthanc process on 127.0.0.1. Use as a context manager, or ``start()``/``stop()``.

    ``url`` is the server's REST root, ``dicomweb_url`` its DICOMweb root. With ``username``
    every request needs basic auth.
    """

    storage: Path | None = None  # None: a temporary folder, removed on stop
    port: int | None = None  # None: a free one
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    stable_age_s: int = DEFAULT_STABLE_AGE
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self, storage: Path) -> dict[str, object]:
        cfg: dict[str, object] = {
            "Name": "ich-review-test",
            "StorageDirectory": str(storage / "db"),
            "IndexDirectory": str(storage / "db"),
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,  # loopback only
            "DicomServerEnabled": False,  # no DICOM port to clash with
            "HttpServerEnabled": True,
            "WebDavEnabled": False,
            "OrthancExplorerEnabled": False,
            "StableAge": self.stable_age_s,
            "SaveJobs": False,
            "OverwriteInstances": True,
            "HttpDescribeErrors": False,
            "Plugins": [dicomweb_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "AuthenticationEnabled": bool(self.username),
        }
        if self.username:
            cfg["RegisteredUsers"] = {self.username: self.password or ""}
        return cfg

    def start(self, timeout_s: float = 30.0) -> LocalOrthanc:
        exe = orthanc_executable()
        if self.storage is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ich-orthanc-")
            root = Path(self._tmp.name)
        else:
            root = Path(self.storage)
            root.mkdir(parents=True, exist_ok=True)
        fixed_port = self.port is not None
        for _attempt in range(1 if fixed_port else 3):
            if not fixed_port:
                self.port = free_port()
            cfg_path = root / "orthanc.json"
            cfg_path.write_text(json.dumps(self.config(root), indent=2))
            log = (root / "orthanc.log").open("ab")
            self.process = subprocess.Popen(
                [exe, str(cfg_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, we stop it
            )
            log.close()
            if self._wait_ready(timeout_s):
                return self
            self._terminate()
        tail = (root / "orthanc.log").read_text(errors="replace")[-2000:]
        self._cleanup()
        raise OrthancUnavailable(f"Orthanc did not start. Its log ends with:\n{tail}")

    def _wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                self.get_json("/system")
                return True
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        return False

    def _request(
        self, path: str, data: bytes | None = None, method: str | None = None
    ) -> urllib.request.Request:
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if self.username:
            token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        return req

    def _open(self, req: urllib.request.Request, timeout: float = 60.0):  # noqa: ANN202
        return urllib.request.urlopen(req, timeout=timeout)

    def get_json(self, path: str) -> object:
        """GET one REST resource of this server (its own API, not DICOMweb)."""
        with self._open(self._request(path), timeout=5) as resp:
            return json.loads(resp.read())

    def upload(self, dicom: bytes) -> dict[str, object]:
        """Store one DICOM file through Orthanc's REST API (POST /instances)."""
        with self._open(self._request("/instances", data=dicom, method="POST")) as resp:
            return json.loads(resp.read())

    def delete_all(self) -> None:
        """Remove every patient (a clean server between tests)."""
        patients = self.get_json("/patients")
        assert isinstance(patients, list)
        for pid in patients:
            with self._open(self._request(f"/patients/{pid}", method="DELETE")):
                pass

    def stop(self) -> None:
        self._terminate()
        self._cleanup()

    def _terminate(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # Orthanc closes its database and exits
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalOrthanc:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.pacs.orthanc_local",
        description="Run a local Orthanc with DICOMweb on 127.0.0.1 until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, help="HTTP port (default: a free one)")
    parser.add_argument("--storage", type=Path, help="keep the data here (default: temporary)")
    parser.add_argument("--user", help="require basic auth with this user name")
    parser.add_argument(
        "--password-env",
        default="ICH_DICOMWEB_PASSWORD",
        help="environment variable holding the password (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    password = os.environ.get(args.password_env, "") if args.user else None
    if args.user and not password:
        print(f"Set {args.password_env} to the password for --user.", file=sys.stderr)
        return 2
    server = LocalOrthanc(
        storage=args.storage, port=args.port, username=args.user, password=password
    )
    try:
        server.start()
    except OrthancUnavailable as exc:
        print(exc, file=sys.stderr)
        return 3
    print(f"Orthanc REST:  {server.url}", flush=True)
    print(f"DICOMweb:      {server.dicomweb_url}", flush=True)
    print("Ctrl-C stops it" + ("" if args.storage else " and deletes what it stored") + ".")
    stop = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop and server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
