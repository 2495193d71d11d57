"""Study → Series → slices, built from a zip, a folder or bytes by ``load_studies``.

A series' pixels live in one contiguous int16 array (slices × rows × cols) in Hounsfield units,
built once, in patient-axis order: slices are sorted by ImagePositionPatient projected on the
normal of ImageOrientationPatient (row cosines × column cosines), never by file name or
InstanceNumber, which scanners and exports do not keep consistent.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import TypeVar

import numpy as np

from core.dicom.archive import DEFAULT_LIMITS, ArchiveLimits, open_upload
from core.dicom.ct_slice import RawSlice, Skipped, SkipReason, parse_dicom_date, read_member
from core.errors import NoImagesError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Consecutive slices closer than this (mm) share a position.
DUPLICATE_TOLERANCE_MM = 0.01
#: A step larger than this multiple of the usual spacing is reported as a gap.
GAP_FACTOR = 1.5
#: Series whose normal lies within this angle of the patient's head-foot axis count as axial.
AXIAL_MAX_ANGLE_DEG = 45.0
#: Tilts below this are rounding noise, not a gantry tilt.
TILT_MIN_DEG = 0.5


@dataclass(frozen=True)
class SliceInfo:
    """One slice of a series, in patient-axis order (index 0 = lowest z along the normal)."""

    index: int
    sop_instance_uid: str
    sop_class_uid: str  # CT Image Storage, or Enhanced CT…: what a DICOM SEG or SR references
    instance_number: int | None
    position: tuple[float, float, float] | None  # ImagePositionPatient (mm)
    z: float  # position projected on the slice normal (mm); the index when positions are missing
    source: str  # file name inside the upload, for messages only


@dataclass(frozen=True, eq=False)
class Series:
    """One series: metadata, slices in patient-axis order and their HU pixels."""

    series_instance_uid: str
    modality: str
    description: str
    series_number: str
    slices: tuple[SliceInfo, ...]
    hu: np.ndarray = field(repr=False)  # int16 (n, rows, cols), read-only
    orientation: tuple[float, ...] | None  # ImageOrientationPatient
    pixel_spacing: tuple[float, float] | None  # PixelSpacing (row, column) mm
    slice_thickness: float | None  # SliceThickness mm
    spacing: float | None  # median distance between consecutive slice positions, mm
    tilt_deg: float  # gantry tilt: angle between the stacking direction and the slice normal
    convolution_kernel: str
    manufacturer: str
    transfer_syntaxes: tuple[str, ...]
    is_localizer: bool
    # The patient coordinate system the slices share: a DICOM SEG drawn on them must name it.
    frame_of_reference_uid: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def shape(self) -> tuple[int, int, int]:
        n, rows, cols = self.hu.shape
        return int(n), int(rows), int(cols)

    @property
    def normal(self) -> np.ndarray | None:
        return slice_normal(self.orientation)

    @property
    def is_axial(self) -> bool:
        n = self.normal
        if n is None:
            return True  # no orientation given: CT is acquired axially unless it says otherwise
        return abs(float(n[2])) >= np.cos(np.radians(AXIAL_MAX_ANGLE_DEG))

    @cached_property
    def pixel_hash(self) -> str:
        """sha256 of the HU pixels and their shape: the key of any cached model result."""
        h = hashlib.sha256(str(self.hu.shape).encode())
        h.update(np.ascontiguousarray(self.hu).data)
        return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Study:
    """One study (StudyInstanceUID) of an upload, with every CT series found for it.

    Patient-identifying fields are excluded from repr so that logging a Study never leaks them.
    How the patient is named on screen and in reports (identity or pseudonym) is decided in
    core.review.pseudonym, which holds the installation's secret.
    """

    study_instance_uid: str
    patient_id: str = field(repr=False)
    patient_name: str = field(repr=False)
    accession_number: str = field(repr=False)
    study_date: date | None
    study_time: str
    study_description: str
    institution: str = field(repr=False)
    series: tuple[Series, ...]
    warnings: tuple[str, ...] = ()

    @property
    def default_series(self) -> Series:
        """The series a radiologist would read first: axial, not a scout, of standard thickness
        (≥ 2.5 mm: the model was trained on ~5 mm slices, and thin series cost far more), then
        the one with most slices."""
        return max(self.series, key=_series_rank)

    def series_by_uid(self, uid: str) -> Series:
        for s in self.series:
            if s.series_instance_uid == uid:
                return s
        raise KeyError(uid)


def _series_rank(s: Series) -> tuple:
    thickness = s.slice_thickness if s.slice_thickness is not None else (s.spacing or 0.0)
    return (s.modality == "CT", s.is_axial, not s.is_localizer, thickness >= 2.5, s.n_slices)


def slice_normal(orientation: Sequence[float] | None) -> np.ndarray | None:
    """Unit normal of ImageOrientationPatient (row cosines × column cosines); None when the
    orientation is missing or degenerate."""
    if orientation is None:
        return None
    n = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    norm = float(np.linalg.norm(n))
    return n / norm if norm > 1e-6 else None


def patient_axis_z(position: Sequence[float], normal: np.ndarray | None) -> float:
    """A slice's place along the patient axis, in mm: ImagePositionPatient · the slice normal
    (the scanner's z axis when the orientation is unknown). The one place it is computed: the
    study loader sorts by it, the training index of a challenge folder records it.

    >>> patient_axis_z((0.0, 0.0, 12.5), slice_normal((1, 0, 0, 0, 1, 0)))
    12.5
    """
    axis = normal if normal is not None else np.array([0.0, 0.0, 1.0])
    return float(np.dot(position, axis))


ProgressCallback = Callable[[int, int], None]


def _workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2))


def load_studies(
    source: str | os.PathLike[str] | bytes,
    limits: ArchiveLimits = DEFAULT_LIMITS,
    progress: ProgressCallback | None = None,
) -> list[Study]:
    """Read every CT study in ``source`` (zip path, folder, DICOM file, or bytes of either).

    Raises InputError (unreadable or unsafe upload) or NoImagesError (nothing to show); what
    could be read from a partly bad upload is returned, with each problem in ``warnings``.
    ``progress(done, total)`` is called after each file is read.

    >>> studies = load_studies(DEMO_ZIP)  # doctest: +SKIP
    >>> studies[0].default_series.hu.shape  # doctest: +SKIP
    (32, 512, 512)
    """
    raws: list[RawSlice] = []
    skipped: list[Skipped] = []
    # Inflating (zlib) and decoding release the GIL: members are read on all cores. Each member's
    # bytes live only while it is parsed; past the upload's deadline (ArchiveLimits.max_seconds)
    # reading stops with an UnsafeArchiveError, and the members not yet read are dropped.
    with open_upload(source, limits) as members, ThreadPoolExecutor(_workers()) as pool:
        try:
            for i, result in enumerate(pool.map(read_member, members), 1):
                if isinstance(result, RawSlice):
                    raws.append(result)
                else:
                    skipped.append(result)
                if progress is not None:
                    progress(i, len(members))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    upload_notes = _skip_notes(skipped)
    ct = [r for r in raws if r.modality == "CT" and r.hu is not None]
    if not ct:
        raise NoImagesError(_no_ct_message(raws, skipped))
    other = Counter(r.modality for r in raws if r.modality != "CT")
    if other:
        upload_notes.append(
            "Series of other modalities were left out (this tool reads CT only): "
            + ", ".join(f"{n} {m} image(s)" for m, n in sorted(other.items()))
            + "."
        )
    ct, dup_notes = _drop_duplicate_instances(ct)
    upload_notes += dup_notes
    by_study: dict[str, list[RawSlice]] = defaultdict(list)
    for r in ct:
        by_study[r.study_instance_uid].append(r)
    studies = [_build_study(uid, items, upload_notes) for uid, items in by_study.items()]
    for study in studies:
        log.info(
            "loaded study with %d series (%s slices)",
            len(study.series),
            "+".join(str(s.n_slices) for s in study.series),
        )
    return sorted(studies, key=lambda s: (s.study_date or date.min, s.study_instance_uid))


def _no_ct_message(raws: list[RawSlice], skipped: list[Skipped]) -> str:
    modalities = Counter(r.modality for r in raws)
    if modalities:
        kinds = ", ".join(f"{m}" for m in sorted(modalities))
        return (
            f"This upload holds {kinds} images, not CT. The tool reads head CT only; "
            "choose the CT study."
        )
    detail = "; ".join(n.rstrip(".") for n in _skip_notes(skipped)) or "no files"
    return f"This upload holds no CT images ({detail})."


def _skip_notes(skipped: list[Skipped]) -> list[str]:
    """One readable line per kind of skipped file, naming a few of them."""
    notes: list[str] = []
    by_reason: dict[SkipReason, list[Skipped]] = defaultdict(list)
    for s in skipped:
        by_reason[s.reason].append(s)
    for reason, items in by_reason.items():
        if reason in (SkipReason.DAMAGED, SkipReason.UNSUPPORTED, SkipReason.IMPOSSIBLE_VALUES):
            notes += [_as_sentence(s) for s in items[:20]]
            if len(items) > 20:
                notes.append(f"… and {len(items) - 20} more {reason.value} files were skipped.")
            continue
        examples = ", ".join(s.name for s in items[:3]) + (", …" if len(items) > 3 else "")
        notes.append(f"{len(items)} file(s) skipped as {reason.value}: {examples}.")
    return notes


def _as_sentence(s: Skipped) -> str:
    """A skip detail as one sentence: a leading file name keeps its case, one final period."""
    text = s.detail.rstrip(".")
    if not text.startswith(s.name):
        text = text[:1].upper() + text[1:]
    return text + "."


def _drop_duplicate_instances(raws: list[RawSlice]) -> tuple[list[RawSlice], list[str]]:
    """The same SOPInstanceUID twice (a file copied twice in the zip) is one slice."""
    seen: dict[str, RawSlice] = {}
    dropped = 0
    for r in raws:
        key = r.sop_instance_uid or f"no-uid:{r.name}"
        if key in seen:
            dropped += 1
            continue
        seen[key] = r
    notes = (
        [f"{dropped} file(s) repeated an image already read (same SOPInstanceUID); ignored."]
        if dropped
        else []
    )
    return list(seen.values()), notes


def _build_study(uid: str, raws: list[RawSlice], upload_notes: list[str]) -> Study:
    by_series: dict[str, list[RawSlice]] = defaultdict(list)
    for r in raws:
        by_series[r.series_instance_uid].append(r)
    series = tuple(
        sorted(
            (_build_series(suid, items) for suid, items in by_series.items()),
            key=lambda s: (s.series_number.zfill(6), s.series_instance_uid),
        )
    )
    first = raws[0].header
    warnings = list(upload_notes)
    if len(series) > 1:
        chosen = max(series, key=_series_rank)
        warnings.append(
            f"This study has {len(series)} CT series; series {chosen.series_number or '?'} "
            f"'{chosen.description or 'without description'}' ({chosen.n_slices} slices) is "
            "shown by default."
        )
    return Study(
        study_instance_uid=uid,
        patient_id=first["PatientID"],
        patient_name=first["PatientName"],
        accession_number=first["AccessionNumber"],
        study_date=parse_dicom_date(first["StudyDate"]),
        study_time=first["StudyTime"],
        study_description=first["StudyDescription"],
        institution=first["InstitutionName"],
        series=series,
        warnings=tuple(warnings),
    )


def _majority(values: list[T]) -> T:
    return Counter(values).most_common(1)[0][0]


def _build_series(uid: str, raws: list[RawSlice]) -> Series:
    warnings: list[str] = []
    # Slices of another size or orientation than most (a scout inside the series, a resized
    # export) cannot stack with the rest: keep the majority and say what was left out.
    size = _majority([(r.rows, r.columns) for r in raws])
    odd = [r for r in raws if (r.rows, r.columns) != size]
    if odd:
        warnings.append(
            f"{len(odd)} slice(s) of another size than the series' {size[0]}×{size[1]} were "
            f"skipped (e.g. {odd[0].name}, {odd[0].rows}×{odd[0].columns})."
        )
        raws = [r for r in raws if (r.rows, r.columns) == size]
    orientations = [_rounded(r.orientation) for r in raws]
    main_orientation = _majority(orientations)
    off = [r for r, o in zip(raws, orientations, strict=True) if o != main_orientation]
    if off:
        warnings.append(
            f"{len(off)} slice(s) with another orientation than the rest of the series "
            f"(a localizer?) were skipped (e.g. {off[0].name})."
        )
        raws = [r for r, o in zip(raws, orientations, strict=True) if o == main_orientation]
    orientation = next((r.orientation for r in raws if r.orientation is not None), None)
    ordered, z, order_notes = _order(raws, slice_normal(orientation))
    warnings += order_notes
    spacing, spacing_notes = _spacing_report(z, ordered)
    warnings += spacing_notes
    if len(ordered) == 1:
        warnings.append(
            "This series has a single slice: it is not a whole head CT, and study-level scores "
            "from it are unreliable."
        )
    tilt = _tilt_deg(ordered, slice_normal(orientation))
    slices = tuple(
        SliceInfo(
            index=i,
            sop_instance_uid=r.sop_instance_uid,
            sop_class_uid=r.sop_class_uid,
            instance_number=r.instance_number,
            position=r.position,
            z=float(zi),
            source=r.name,
        )
        for i, (r, zi) in enumerate(zip(ordered, z, strict=True))
    )
    hu = np.stack([r.hu for r in ordered])  # type: ignore[misc]
    hu.flags.writeable = False
    first = ordered[0]
    thickness = [r.slice_thickness for r in ordered if r.slice_thickness is not None]
    spacing_px = [r.pixel_spacing for r in ordered if r.pixel_spacing is not None]
    return Series(
        series_instance_uid=uid,
        modality=first.modality,
        description=first.header["SeriesDescription"],
        series_number=first.header["SeriesNumber"],
        slices=slices,
        hu=hu,
        orientation=orientation,
        pixel_spacing=_majority(spacing_px) if spacing_px else None,
        slice_thickness=float(np.median(thickness)) if thickness else None,
        spacing=spacing,
        tilt_deg=tilt,
        convolution_kernel=first.header["ConvolutionKernel"],
        manufacturer=first.header["Manufacturer"],
        transfer_syntaxes=tuple(sorted({r.transfer_syntax for r in ordered if r.transfer_syntax})),
        is_localizer=any("LOCALIZER" in r.image_type for r in ordered),
        frame_of_reference_uid=first.header["FrameOfReferenceUID"],
        warnings=tuple(warnings),
    )


def _rounded(orientation: tuple[float, ...] | None) -> tuple[float, ...] | None:
    return None if orientation is None else tuple(round(v, 3) for v in orientation)


def _order(
    raws: list[RawSlice], normal: np.ndarray | None
) -> tuple[list[RawSlice], np.ndarray, list[str]]:
    """Sort along the patient axis: ImagePositionPatient · normal(ImageOrientationPatient).

    Fallbacks, each with a warning: InstanceNumber when positions are missing, then file order.
    """
    missing = sum(r.position is None for r in raws)
    if missing == 0:
        z = np.array([patient_axis_z(r.position, normal) for r in raws])  # type: ignore[arg-type]
        order = np.argsort(z, kind="stable")
        notes = (
            []
            if normal is not None
            else ["ImageOrientationPatient is missing: slices were ordered by their z position."]
        )
        return [raws[i] for i in order], z[order], notes
    if all(r.instance_number is not None for r in raws):
        ordered = sorted(raws, key=lambda r: r.instance_number)  # type: ignore[arg-type,return-value]
        note = (
            f"{missing} slice(s) have no ImagePositionPatient: slices were ordered by "
            "InstanceNumber instead, which may not follow the head. Check the order."
        )
    else:
        ordered = sorted(raws, key=lambda r: _natural_key(r.name))
        note = (
            "Slice positions and instance numbers are missing: slices are shown in file-name "
            "order, which may not follow the head. Check the order."
        )
    return ordered, np.arange(len(ordered), dtype=float), [note]


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _spacing_report(z: np.ndarray, ordered: list[RawSlice]) -> tuple[float | None, list[str]]:
    """Median spacing, plus a warning for each duplicate position and each gap."""
    if len(z) < 2 or ordered[0].position is None:
        return None, []
    steps = np.diff(z)
    notes: list[str] = []
    dup = np.flatnonzero(steps < DUPLICATE_TOLERANCE_MM)
    if dup.size:
        pairs = ", ".join(f"{i + 1} and {i + 2}" for i in dup[:5]) + (" …" if dup.size > 5 else "")
        notes.append(
            f"{dup.size} pair(s) of slices share the same position (slices {pairs}): the series "
            "may mix two acquisitions."
        )
    regular = steps[steps >= DUPLICATE_TOLERANCE_MM]
    if regular.size == 0:
        return None, notes
    spacing = float(np.median(regular))
    for i in np.flatnonzero(steps > GAP_FACTOR * spacing)[:10]:
        notes.append(
            f"Gap of {steps[i]:.1f} mm between slices {i + 1} and {i + 2} (usual spacing "
            f"{spacing:.1f} mm): slices may be missing."
        )
    return spacing, notes


def _tilt_deg(ordered: list[RawSlice], normal: np.ndarray | None) -> float:
    """Angle between the direction the slices stack in and the slice normal.

    A gantry-tilted acquisition stacks slices along the table (z) while each image plane is
    tilted, so its volume is sheared by this angle. GantryDetectorTilt is used when positions
    cannot tell (a single slice, missing positions).
    """
    positions = [r.position for r in ordered if r.position is not None]
    if normal is not None and len(positions) >= 2:
        step = np.asarray(positions[-1]) - np.asarray(positions[0])
        length = float(np.linalg.norm(step))
        if length > 1e-3:
            cos = min(1.0, abs(float(np.dot(step / length, normal))))
            tilt = float(np.degrees(np.arccos(cos)))
            return round(tilt, 2) if tilt >= TILT_MIN_DEG else 0.0
    tilts = [r.gantry_tilt for r in ordered if r.gantry_tilt is not None]
    return round(abs(float(np.median(tilts))), 2) if tilts else 0.0
