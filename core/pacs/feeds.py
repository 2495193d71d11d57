"""How the watcher learns that a study arrived: Orthanc's change feed, or QIDO-RS by date.

Why two: Orthanc numbers every change (``GET /changes?since=N``) and reports ``StableStudy``
once a study has received no new image for its StableAge, which is exactly "a study has
arrived, complete"; the watcher keeps the number and resumes from it. Other PACS offer only
DICOMweb: there the watcher asks, at each poll, for the CT studies dated within the last days
(QIDO-RS) and skips those it has done (core.pacs.watch_state). ``detect_feed`` picks Orthanc's
feed when the server answers it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Protocol

from core.pacs.dicomweb import DicomWebSource, PacsSettings, http_errors

#: Changes asked for per request of Orthanc's feed.
CHANGES_PAGE = 100
#: Studies asked for per QIDO-RS page.
QIDO_PAGE = 100


@dataclass(frozen=True)
class Arrival:
    """A feed entry: a study that arrived (None: a change of no interest), and the feed
    position to save once it is handled (None for feeds without positions)."""

    study_instance_uid: str | None
    position: int | None


class Feed(Protocol):
    #: Names the feed and its server in the watcher's state (no credentials).
    key: str

    def arrivals(self, since: int | None) -> Iterator[Arrival]: ...


class OrthancChanges:
    """Orthanc's change log: StableStudy entries after position ``since``."""

    def __init__(self, settings: PacsSettings) -> None:
        self.settings = settings
        self.root = settings.server_root
        self.session = settings.session()
        self.key = f"orthanc-changes:{self.root}"

    def _get(self, path: str, action: str) -> dict:
        with http_errors(self.settings, action):
            resp = self.session.get(self.root + path, timeout=self.settings.timeout_s)
            resp.raise_for_status()
            return resp.json()

    def last(self) -> int:
        """The newest position now (to start from, when earlier studies are not wanted)."""
        return int(self._get("/changes?last", "read the change feed").get("Last", 0))

    def arrivals(self, since: int | None) -> Iterator[Arrival]:
        position = since or 0
        while True:
            page = self._get(
                f"/changes?since={position}&limit={CHANGES_PAGE}", "read the change feed"
            )
            for change in page.get("Changes", []):
                seq = int(change["Seq"])
                uid = None
                if change.get("ChangeType") == "StableStudy":
                    uid = self._study_uid(str(change.get("ID", "")))
                yield Arrival(uid, seq)
                position = seq
            if page.get("Done", True) or not page.get("Changes"):
                return

    def _study_uid(self, orthanc_id: str) -> str | None:
        try:
            info = self._get(f"/studies/{orthanc_id}", "look up an arrived study")
        except Exception:  # noqa: BLE001 - deleted since it arrived: nothing to do
            return None
        return (info.get("MainDicomTags") or {}).get("StudyInstanceUID")


class QidoByDate:
    """CT studies dated within the last ``days`` days (0: any date), listed by QIDO-RS."""

    def __init__(self, source: DicomWebSource, days: int = 1) -> None:
        self.source = source
        self.days = days
        self.key = f"qido:{source.settings.url}"

    def arrivals(self, since: int | None) -> Iterator[Arrival]:
        date_from = date.today() - timedelta(days=self.days) if self.days > 0 else None
        offset = 0
        while True:
            page = self.source.search_ct_studies(
                date_from=date_from, limit=QIDO_PAGE, offset=offset
            )
            for study in page:
                yield Arrival(study.study_instance_uid, None)
            if len(page) < QIDO_PAGE:
                return
            offset += len(page)


def detect_feed(source: DicomWebSource, kind: str = "auto", days: int = 1) -> Feed:
    """``kind`` 'orthanc', 'qido' or 'auto' (Orthanc's feed when the server answers it)."""
    if kind == "qido":
        return QidoByDate(source, days)
    changes = OrthancChanges(source.settings)
    if kind == "orthanc":
        return changes
    try:
        changes.last()
    except Exception:  # noqa: BLE001 - any failure: not an Orthanc, use plain DICOMweb
        return QidoByDate(source, days)
    return changes
