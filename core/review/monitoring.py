"""Patient monitoring: one patient's studies in time order, and hematoma expansion between them.

Why: the neurosurgeon's question on a follow-up scan is "did it grow?". Expansion is flagged by
the usual definition in the ICH literature (e.g. Dowlatshahi 2011; Brouwers 2012): an absolute
growth of at least 6 mL or a relative growth of at least 33 % between consecutive scans. The
volumes are core.imaging.volume's estimates, so the flag is an estimate too, and is labelled so.

Studies are grouped by PatientID (kept inside core, never shown unless the user chose to show
identities); a study without a PatientID stands alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time

#: Hematoma expansion: growth of at least this many mL …
EXPANSION_ML = 6.0
#: … or at least this share of the earlier volume.
EXPANSION_RELATIVE = 0.33
#: Below this volume (mL) the relative rule is not applied: a 0.3 → 0.5 mL change of a
#: density estimate is noise, not a 67 % growth.
MIN_BASE_ML = 1.0

DEFINITION = (
    f"growth ≥ {EXPANSION_RELATIVE:.0%} or ≥ {EXPANSION_ML:g} mL between consecutive scans "
    "(estimated volumes)"
)


@dataclass(frozen=True)
class TimePoint:
    """One study of a patient: when, the study-level P(any) and the estimated volume."""

    study_instance_uid: str
    acquired: datetime | None
    p_any: float | None
    volume_ml: float | None


@dataclass(frozen=True)
class Change:
    """From one scan to the next."""

    before: TimePoint
    after: TimePoint
    growth_ml: float | None
    growth_relative: float | None
    expansion: bool

    @property
    def hours(self) -> float | None:
        if self.before.acquired is None or self.after.acquired is None:
            return None
        return (self.after.acquired - self.before.acquired).total_seconds() / 3600.0


def acquired_at(study_date: date | None, study_time: str) -> datetime | None:
    """StudyDate + StudyTime (DICOM TM: HHMMSS.FFFFFF, parts optional) as a datetime."""
    if study_date is None:
        return None
    digits = (study_time or "").split(".")[0].strip()
    try:
        hh = int(digits[0:2]) if len(digits) >= 2 else 0
        mm = int(digits[2:4]) if len(digits) >= 4 else 0
        ss = int(digits[4:6]) if len(digits) >= 6 else 0
        return datetime.combine(study_date, time(hh, mm, min(ss, 59)))
    except ValueError:
        return datetime.combine(study_date, time())


def timeline(points: Iterable[TimePoint]) -> list[TimePoint]:
    """Time order; studies without a date last, in their given order."""
    items = list(points)
    dated = sorted(
        (p for p in items if p.acquired is not None),
        key=lambda p: p.acquired or datetime.min,  # (never None here: filtered above)
    )
    return dated + [p for p in items if p.acquired is None]


def changes(points: Iterable[TimePoint]) -> list[Change]:
    """Consecutive pairs of a patient's timeline, each checked for expansion."""
    ordered = timeline(points)
    out = []
    for before, after in zip(ordered, ordered[1:], strict=False):
        grow = rel = None
        expanded = False
        if before.volume_ml is not None and after.volume_ml is not None:
            grow = after.volume_ml - before.volume_ml
            if before.volume_ml >= MIN_BASE_ML:
                rel = grow / before.volume_ml
            expanded = grow >= EXPANSION_ML or (rel is not None and rel >= EXPANSION_RELATIVE)
        out.append(Change(before, after, grow, rel, expanded))
    return out


def group_by_patient(patient_ids: dict[str, str]) -> dict[str, list[str]]:
    """study uid → PatientID, to PatientID → study uids (those with ≥ 2 studies only)."""
    groups: dict[str, list[str]] = {}
    for uid, pid in patient_ids.items():
        if pid:
            groups.setdefault(pid, []).append(uid)
    return {pid: uids for pid, uids in groups.items() if len(uids) >= 2}
