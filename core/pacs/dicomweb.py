"""A DICOMweb server (a PACS) as a source of CT studies and a place to store results.

Why through ``dicomweb-client``: QIDO-RS (search), WADO-RS (retrieve) and STOW-RS (store) are
plain HTTP, but their multipart bodies, query parameters and JSON attributes are easy to get
subtly wrong; the library is maintained against the standard and the big servers.

A retrieved study goes through the *same* loader as an upload: its instances are packed, as
they stream in, into an in-memory zip (stored, not compressed) under names made here (never the
server's), and ``core.dicom.study.load_studies`` reads that zip with the same ArchiveLimits. So a
study from the PACS meets the same limits (files, bytes, seconds), the same checks and the same
messages as one uploaded by hand. The limits are also checked while downloading, so a study
larger than allowed stops being fetched as soon as it is too large.

Credentials (basic auth) are never logged or shown: ``PacsSettings`` hides them in its repr and
every message names the server by its address without user information. Every failure is a
``PacsError`` whose message says what went wrong and what to do, never a traceback.
"""

from __future__ import annotations

import io
import logging
import os
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from urllib.parse import urlsplit, urlunsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.errors import InvalidDicomError

from core.dicom.archive import DEFAULT_LIMITS, ArchiveLimits
from core.dicom.study import Study, load_studies
from core.errors import NotCTStudyError, PacsError, UnsafeArchiveError

log = logging.getLogger(__name__)

#: Environment variables read by ``PacsSettings.from_env`` (and documented in the README).
ENV_URL = "ICH_DICOMWEB_URL"
ENV_USER = "ICH_DICOMWEB_USER"
ENV_PASSWORD = "ICH_DICOMWEB_PASSWORD"
ENV_CA = "ICH_DICOMWEB_CA"

#: QIDO-RS attribute keywords asked for when listing studies.
_STUDY_FIELDS = (
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "AccessionNumber",
    "PatientID",
    "PatientName",
)
_SERIES_FIELDS = ("Modality", "SeriesDescription", "NumberOfSeriesRelatedInstances")


@dataclass(frozen=True)
class PacsSettings:
    """Where the PACS is and how to log in. ``url`` is the DICOMweb root (for Orthanc
    ``http://host:8042/dicom-web``). A user and password written into the URL
    (``https://user:pw@host/…``) are moved out of it, so the URL can be shown.

    >>> s = PacsSettings("https://ann:secret@pacs.example/dicom-web/")
    >>> s.url, s.username, "secret" in repr(s)
    ('https://pacs.example/dicom-web', 'ann', False)
    """

    url: str
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    ca_bundle: str | None = None  # PEM file of the CA that signed the server's certificate
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PacsError(
                "The PACS address must start with http:// or https:// and name a server "
                "(for example https://pacs.example.org/dicom-web)."
            )
        username, password = self.username, self.password
        if parts.username is not None:
            username = username or (parts.username or "")
            password = password or (parts.password or "")
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        clean = urlunsplit((parts.scheme, host, parts.path.rstrip("/"), parts.query, ""))
        object.__setattr__(self, "url", clean)
        object.__setattr__(self, "username", username)
        object.__setattr__(self, "password", password)

    def __repr__(self) -> str:
        login = ", login set" if self.username else ""
        return f"PacsSettings(url={self.url!r}{login})"

    @property
    def server_root(self) -> str:
        """The server's address without the DICOMweb path (Orthanc's REST API lives there)."""
        parts = urlsplit(self.url)
        path = parts.path
        for suffix in ("/dicom-web", "/dicomweb", "/wado-rs", "/rs"):
            if path.endswith(suffix):
                path = path[: -len(suffix)]
                break
        return urlunsplit((parts.scheme, parts.netloc, path, "", ""))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PacsSettings | None:
        """Settings from ICH_DICOMWEB_URL / _USER / _PASSWORD / _CA; None when no URL is set."""
        env = os.environ if env is None else env
        url = env.get(ENV_URL, "").strip()
        if not url:
            return None
        return cls(
            url,
            username=env.get(ENV_USER, ""),
            password=env.get(ENV_PASSWORD, ""),
            ca_bundle=env.get(ENV_CA) or None,
        )

    @classmethod
    def from_settings(
        cls, env: Mapping[str, str] | None = None, secrets: Mapping[str, object] | None = None
    ) -> PacsSettings | None:
        """The environment's settings, else the ``[pacs]`` table of the dashboard's
        ``.streamlit/secrets.toml`` (keys ``url``, ``username``, ``password``, ``ca_bundle``);
        None when neither names a server.

        >>> PacsSettings.from_settings({}, {"url": "http://pacs:8042/dicom-web"}).url
        'http://pacs:8042/dicom-web'
        """
        found = cls.from_env(env)
        if found is not None or not secrets or not str(secrets.get("url", "")).strip():
            return found
        ca = secrets.get("ca_bundle")
        return cls(
            str(secrets["url"]),
            username=str(secrets.get("username", "")),
            password=str(secrets.get("password", "")),
            ca_bundle=str(ca) if ca else None,
        )

    def session(self) -> requests.Session:
        """An HTTP session with the login and the certificate check set."""
        session = _WildcardSession()
        if self.username:
            session.auth = (self.username, self.password)
        session.verify = self.ca_bundle or True
        return session


class _WildcardSession(requests.Session):
    """A session that keeps the hospital's CA file and sends QIDO-RS wildcards as themselves.

    requests percent-encodes ``*`` and ``?`` (``%2A``, ``%3F``), which the standard allows,
    but Orthanc's DICOMweb plugin (Debian's 1.7) does not decode query values, so ``*HEAD*``
    would match nothing. Both characters are legal unencoded in a query (RFC 3986), so every
    server reads the literal form the same way.
    """

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        prepared = super().prepare_request(request)
        if prepared.url and "?" in prepared.url:
            path, query = prepared.url.split("?", 1)
            prepared.url = path + "?" + query.replace("%2A", "*").replace("%3F", "?")
        return prepared

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # noqa: ANN001
        """The CA file given for this PACS wins over ``$REQUESTS_CA_BUNDLE`` (requests would
        otherwise prefer the environment's and refuse the hospital's certificate)."""
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if isinstance(self.verify, str):
            settings["verify"] = self.verify
        return settings


@dataclass(frozen=True)
class PacsStudy:
    """One study as the PACS lists it (QIDO-RS), before any image is fetched."""

    study_instance_uid: str
    study_date: date | None
    study_time: str
    description: str
    modalities: tuple[str, ...]
    n_series: int | None
    n_instances: int | None
    patient_id: str = field(repr=False)
    patient_name: str = field(repr=False)
    accession_number: str = field(repr=False)

    @property
    def is_ct(self) -> bool:
        return "CT" in self.modalities


@dataclass(frozen=True)
class PacsSeries:
    series_instance_uid: str
    modality: str
    description: str
    n_instances: int | None


ProgressCallback = Callable[[int, int], None]


class DicomWebSource:
    """Search, retrieve and store on one DICOMweb server."""

    def __init__(self, settings: PacsSettings, limits: ArchiveLimits = DEFAULT_LIMITS) -> None:
        self.settings = settings
        self.limits = limits
        self.client = DICOMwebClient(
            settings.url,
            session=settings.session(),
            # Anonymised archives (RSNA's among them) name studies 'ID_…', which the standard
            # does not allow but servers store; refusing them would make such studies unreachable.
            permissive_uid=True,
            timeout=settings.timeout_s,
        )
        # Fail at once with a message; whoever called decides whether to try again later.
        self.client.set_http_retry_params(retry=False)

    def __repr__(self) -> str:
        return f"DicomWebSource({self.settings!r})"

    # -- QIDO-RS ------------------------------------------------------------------------------

    def search_ct_studies(
        self,
        date_from: date | None = None,
        date_to: date | None = None,
        description: str | None = None,
        modality: str = "CT",
        limit: int = 100,
        offset: int = 0,
    ) -> list[PacsStudy]:
        """Studies holding ``modality`` images, optionally dated within [date_from, date_to]
        and with ``description`` in their StudyDescription (a wildcard match, * and ?)."""
        filters: dict[str, str] = {"ModalitiesInStudy": modality}
        if date_from or date_to:
            filters["StudyDate"] = (
                f"{date_from.strftime('%Y%m%d') if date_from else ''}-"
                f"{date_to.strftime('%Y%m%d') if date_to else ''}"
            )
        if description:
            # A space is matched by '?' (any one character): Orthanc's plugin does not decode
            # an encoded space either (see _WildcardSession).
            text = "?".join(description.split())
            wildcards = "*" in description or "?" in description
            filters["StudyDescription"] = text if wildcards else f"*{text}*"
        with self._errors("search for studies"):
            found = self.client.search_for_studies(
                search_filters=filters, fields=list(_STUDY_FIELDS), limit=limit, offset=offset
            )
        return [_pacs_study(item) for item in found]

    def find_study(self, study_instance_uid: str) -> PacsStudy | None:
        """The study with this UID, whatever its modality; None when the server has none."""
        with self._errors("look up the study"):
            found = self.client.search_for_studies(
                search_filters={"StudyInstanceUID": study_instance_uid},
                fields=list(_STUDY_FIELDS),
            )
        return _pacs_study(found[0]) if found else None

    def series_of(self, study_instance_uid: str) -> list[PacsSeries]:
        with self._errors("list the study's series"):
            found = self.client.search_for_series(study_instance_uid, fields=list(_SERIES_FIELDS))
        return [
            PacsSeries(
                series_instance_uid=_text(item, "0020000E"),
                modality=_text(item, "00080060"),
                description=_text(item, "0008103E"),
                n_instances=_int(item, "00201209"),
            )
            for item in found
        ]

    # -- WADO-RS ------------------------------------------------------------------------------

    def retrieve_study(
        self, study_instance_uid: str, progress: ProgressCallback | None = None
    ) -> Study:
        """Fetch the CT series of one study and read them with the upload loader.

        Raises PacsError (server unreachable, login refused, no such study, not a CT study,
        transfer cut short), or the loader's InputError / UnsafeArchiveError / NoImagesError.
        """
        series = self.series_of(study_instance_uid)
        if not series:
            raise PacsError(
                f"The PACS at {self.settings.url} has no study {study_instance_uid}, or it "
                "holds no series; check the study was sent there."
            )
        ct = [s for s in series if s.modality == "CT"]
        if not ct:
            kinds = ", ".join(sorted({s.modality or "unknown" for s in series}))
            raise NotCTStudyError(
                f"Study {study_instance_uid} on the PACS holds {kinds} images, not CT. The "
                "tool reads head CT only; choose the CT study."
            )
        expected = sum(s.n_instances or 0 for s in ct) if all(s.n_instances for s in ct) else None
        if expected is not None and expected > self.limits.max_members:
            raise UnsafeArchiveError(
                f"Study {study_instance_uid} holds {expected} CT images, more than the "
                f"{self.limits.max_members} allowed for one study."
            )
        packed, received = self._fetch_as_zip(study_instance_uid, ct, expected, progress)
        if expected is not None and received < expected:
            raise PacsError(_cut_short(study_instance_uid, received, expected))
        studies = load_studies(packed, self.limits)
        for study in studies:
            if study.study_instance_uid == study_instance_uid:
                return study
        return studies[0]

    def _fetch_as_zip(
        self,
        study_uid: str,
        series: Sequence[PacsSeries],
        expected: int | None,
        progress: ProgressCallback | None,
    ) -> tuple[bytes, int]:
        """The series' instances in one in-memory zip, checked against the limits as they
        arrive (count, bytes, seconds); names inside are made here."""
        buf = io.BytesIO()
        received = 0
        total_bytes = 0
        deadline = time.monotonic() + self.limits.max_seconds
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            for k, s in enumerate(series, 1):
                for dataset in self._iter_series(study_uid, s.series_instance_uid, received):
                    data = _part10_bytes(dataset)
                    del dataset
                    received += 1
                    total_bytes += len(data)
                    if received > self.limits.max_members:
                        raise UnsafeArchiveError(
                            f"Study {study_uid} sent more than the {self.limits.max_members} "
                            "images allowed for one study; it was not read."
                        )
                    if total_bytes > self.limits.max_total_bytes:
                        raise UnsafeArchiveError(
                            f"Study {study_uid} is larger than the "
                            f"{self.limits.max_total_bytes >> 20} MB allowed for one study; it "
                            "was not read."
                        )
                    if time.monotonic() > deadline:
                        raise UnsafeArchiveError(
                            f"Fetching study {study_uid} took longer than the "
                            f"{self.limits.max_seconds:.0f} s allowed, so it was stopped."
                        )
                    zf.writestr(f"series-{k:03d}/{received:05d}.dcm", data)
                    if progress is not None:
                        progress(received, expected or received)
        return buf.getvalue(), received

    def _iter_series(
        self, study_uid: str, series_uid: str, before: int
    ) -> Iterator[pydicom.Dataset]:
        got = 0
        with self._errors("retrieve the study", study_uid=study_uid):
            try:
                for dataset in self.client.iter_series(study_uid, series_uid):
                    got += 1
                    yield dataset
            except (
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ConnectionError,
                InvalidDicomError,
                ValueError,
                EOFError,
            ) as exc:
                if isinstance(exc, requests.exceptions.ConnectionError) and got == 0:
                    raise  # never connected: reported as unreachable
                raise PacsError(_cut_short(study_uid, before + got, None)) from exc

    # -- STOW-RS ------------------------------------------------------------------------------

    def store(self, datasets: Sequence[pydicom.Dataset]) -> int:
        """Store DICOM objects (SR, Secondary Capture…) on the server; the number stored."""
        if not datasets:
            return 0
        with self._errors("store the results"):
            response = self.client.store_instances(list(datasets))
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise PacsError(
                f"The PACS at {self.settings.url} refused {len(failed)} of {len(datasets)} "
                f"object(s) (failure reason {', '.join(reasons)})."
            )
        return len(datasets)

    # -- errors -------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str, study_uid: str | None = None) -> Iterator[None]:
        with http_errors(self.settings, action, study_uid):
            yield


@contextmanager
def http_errors(
    settings: PacsSettings, action: str, study_uid: str | None = None
) -> Iterator[None]:
    """Any HTTP failure as one PacsError with a message for the person at the screen."""
    url = settings.url
    try:
        yield
    except PacsError:
        raise
    except requests.exceptions.SSLError as exc:
        raise PacsError(
            f"The PACS at {url} answered over HTTPS with a certificate this computer does "
            f"not trust, so nothing was sent. Give the hospital's CA certificate ({ENV_CA})."
        ) from exc
    except requests.exceptions.HTTPError as exc:
        raise PacsError(_http_message(exc, url, action)) from exc
    except requests.exceptions.ChunkedEncodingError as exc:
        raise PacsError(_cut_short(study_uid or "?", None, None)) from exc
    except requests.exceptions.Timeout as exc:
        raise PacsError(
            f"The PACS at {url} did not answer within {settings.timeout_s:.0f} s when "
            f"asked to {action}. Try again later, or ask IT whether it is overloaded."
        ) from exc
    except requests.exceptions.ConnectionError as exc:
        raise PacsError(
            f"The PACS at {url} cannot be reached ({_reason(exc)}). Check the address and "
            "that the server is running and reachable from this computer."
        ) from exc
    except requests.exceptions.RequestException as exc:
        raise PacsError(f"Could not {action} on the PACS at {url} ({_reason(exc)}).") from exc


def _cut_short(study_uid: str, received: int | None, expected: int | None) -> str:
    counted = (
        f" after {received} of {expected} images"
        if received is not None and expected is not None
        else (f" after {received} image(s)" if received is not None else "")
    )
    return (
        f"The transfer of study {study_uid} from the PACS was cut short{counted}; nothing "
        "was scored from it. Try again; if it keeps happening, ask IT to check the network."
    )


def _http_message(exc: requests.exceptions.HTTPError, url: str, action: str) -> str:
    status = exc.response.status_code if exc.response is not None else None
    if status in (401, 403):
        return (
            f"The PACS at {url} refused the login (HTTP {status}) when asked to {action}. "
            f"Check the user name and password ({ENV_USER}, {ENV_PASSWORD})."
        )
    if status == 404:
        return f"The PACS at {url} has nothing at the address asked for (HTTP 404) to {action}."
    return f"The PACS at {url} answered HTTP {status} when asked to {action}."


def _reason(exc: BaseException) -> str:
    """The innermost cause in a few words (no traceback, no URL with credentials)."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__


def _part10_bytes(dataset: pydicom.Dataset) -> bytes:
    """The instance as a DICOM file, as the loader reads uploads."""
    buf = io.BytesIO()
    dataset.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _value(item: Mapping[str, dict], tag: str) -> object:
    values = item.get(tag, {}).get("Value") or []
    return values[0] if values else None


def _text(item: Mapping[str, dict], tag: str) -> str:
    value = _value(item, tag)
    if isinstance(value, dict):  # PN: {"Alphabetic": "..."}
        return str(value.get("Alphabetic", ""))
    return "" if value is None else str(value)


def _int(item: Mapping[str, dict], tag: str) -> int | None:
    value = _value(item, tag)
    try:
        return int(value) if value is not None else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _date(text: str) -> date | None:
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8])) if len(text) >= 8 else None
    except ValueError:
        return None


def _pacs_study(item: Mapping[str, dict]) -> PacsStudy:
    modalities = tuple(str(m) for m in (item.get("00080061", {}).get("Value") or []))
    return PacsStudy(
        study_instance_uid=_text(item, "0020000D"),
        study_date=_date(_text(item, "00080020")),
        study_time=_text(item, "00080030"),
        description=_text(item, "00081030"),
        modalities=modalities,
        n_series=_int(item, "00201206"),
        n_instances=_int(item, "00201208"),
        patient_id=_text(item, "00100020"),
        patient_name=_text(item, "00100010"),
        accession_number=_text(item, "00080050"),
    )
