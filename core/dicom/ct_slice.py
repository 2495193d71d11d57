"""Parse one uploaded file into a CT slice in Hounsfield units, or say why it was skipped.

Only this module talks to pydicom. Decoding of compressed transfer syntaxes (JPEG Lossless,
JPEG-LS, JPEG 2000, RLE) is pydicom's, through the pylibjpeg plugins the package depends on.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from datetime import date
from enum import Enum

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import MediaStorageDirectoryStorage

from core.dicom.archive import DamagedMemberError, Member, display_name

# Real-world files (the RSNA set among them) carry non-conforming UIDs and values; reading them
# must not flood the log with pydicom's validation warnings, nor fail.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

HU_MIN = -1024  # air; padding and outside-the-scan-circle values are clipped to this
HU_MAX = 32767
#: Largest Rows or Columns read. Head CT slices are 512×512 (a few scanners write 768 or 1024);
#: the limit is checked before decoding, because a decoder allocates what the header declares:
#: a 150 kB RLE file declaring 30000×30000 would cost 1.8 GB. 4096×4096 at 16 bits is 32 MB.
MAX_SLICE_SIDE = 4096
#: No CT value lies beyond ±65536 HU: the widest real encodings (16-bit stored values, an
#: intercept of a few thousand) stay well inside. A rescale that reaches past it is no HU scale.
HU_PLAUSIBLE = 1 << 16


class SkipReason(Enum):
    """Why a file did not become a slice; the loader counts these per upload."""

    NOT_DICOM = "not DICOM"
    ARCHIVE = "a zip inside the upload (not opened: upload the zip inside on its own)"
    DICOMDIR = "DICOMDIR index"
    NO_IMAGE = "DICOM object without an image (report, presentation state…)"
    UNSUPPORTED = "unsupported image"
    IMPOSSIBLE_VALUES = "impossible-value"
    DAMAGED = "damaged"


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: SkipReason
    detail: str


@dataclass(frozen=True, eq=False)
class RawSlice:
    """One image file's metadata (DICOM attributes as read) and, for CT, its HU pixels."""

    name: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    instance_number: int | None
    position: tuple[float, float, float] | None  # ImagePositionPatient
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (row, col cosines)
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    gantry_tilt: float | None
    image_type: tuple[str, ...]
    transfer_syntax: str
    header: dict[str, str]  # study/series/patient attributes, same for every slice of a series
    hu: np.ndarray | None  # int16 (rows, columns); None for non-CT


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _floats(ds: pydicom.Dataset, keyword: str, n: int) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _float(ds: pydicom.Dataset, keyword: str) -> float | None:
    try:
        value = float(ds.get(keyword))
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def parse_dicom_date(value: str) -> date | None:
    """DICOM DA (YYYYMMDD) → date; None when absent or malformed."""
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8])) if len(value) >= 8 else None
    except ValueError:
        return None


HEADER_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "StudyID",
    "SeriesDescription",
    "SeriesNumber",
    "ConvolutionKernel",
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "BodyPartExamined",
    "FrameOfReferenceUID",
    "SpacingBetweenSlices",
)


#: Enough of a file to tell whether it can be DICOM: the 128-byte preamble, 'DICM' and the
#: first tag after it.
HEAD_BYTES = 136
#: The first tag group of a DICOM dataset written without preamble (older exports): the file
#: meta group (0002) or the identifying group (0008), little or big endian.
_RAW_DATASET_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def looks_like_dicom(head: bytes) -> bool:
    """Whether a file's first HEAD_BYTES can begin a DICOM file: 'DICM' after the preamble,
    followed by the file meta group (0002), or, without preamble, a dataset whose first tag is
    in group 0002 or 0008.

    Why: a member that is not DICOM (a photo, a PDF, a megabyte of zeros) is refused from its
    first bytes, before it is inflated and parsed; pydicom's forced parse of 1 MiB of zeros
    alone takes seconds.
    """
    if head[128:132] == b"DICM":
        return head[132:134] == b"\x02\x00"
    return head[:2] in _RAW_DATASET_STARTS


def read_member(member: Member) -> RawSlice | Skipped:
    """Parse one file; never raises for bad content (a bad file becomes a Skipped).

    Only the file's first bytes are inflated until it looks like DICOM, and its bytes are not
    kept once parsed (the slice keeps its HU pixels only). UnsafeArchiveError from the archive
    (the upload took longer than ArchiveLimits.max_seconds) is raised: it stops the upload.
    """
    name = display_name(member.name)
    try:
        head = member.read(HEAD_BYTES)
        if head[:4] == b"PK\x03\x04" and head[128:132] != b"DICM":
            # Not unpacked: a zip inside a zip would escape the limits checked on the upload.
            return Skipped(name, SkipReason.ARCHIVE, f"{name} is a zip inside the upload")
        if not looks_like_dicom(head):
            return Skipped(name, SkipReason.NOT_DICOM, f"{name} is not a DICOM file")
        ds = _dcmread(member.read())
    except DamagedMemberError as exc:
        return Skipped(name, SkipReason.DAMAGED, str(exc))
    if ds is None:
        return Skipped(name, SkipReason.NOT_DICOM, f"{name} is not a DICOM file")
    if _is_dicomdir(ds):
        return Skipped(name, SkipReason.DICOMDIR, "DICOMDIR index file")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        return Skipped(name, SkipReason.NO_IMAGE, f"{name} holds no image")
    try:
        return _to_raw_slice(name, ds)
    except _Unsupported as exc:
        return Skipped(name, SkipReason.UNSUPPORTED, str(exc))
    except NotHounsfieldError as exc:
        return Skipped(name, SkipReason.IMPOSSIBLE_VALUES, f"{name} {exc}; the slice was skipped")
    except Exception as exc:  # noqa: BLE001 - any decoder failure means: this slice is unusable
        return Skipped(name, SkipReason.DAMAGED, _damage_message(name, exc))


def _is_dicomdir(ds: pydicom.Dataset) -> bool:
    """A DICOMDIR is known by its content (Media Storage SOP Class 1.2.840.10008.1.3.10), never
    by its file name: exports name slices freely, and a real slice called DICOMDIR is a slice."""
    meta = getattr(ds, "file_meta", None)
    return MediaStorageDirectoryStorage in (
        getattr(meta, "MediaStorageSOPClassUID", None),
        ds.get("SOPClassUID"),
    )


def _dcmread(data: bytes) -> pydicom.Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError:
            pass  # no 'DICM' preamble: old files omit it; accept only if it really is an image
        except Exception:  # noqa: BLE001 - truncated headers raise many kinds of error
            return None
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            if "SOPInstanceUID" in ds and "PixelData" in ds and "Rows" in ds:
                return ds
        except Exception:  # noqa: BLE001
            pass
    return None


class _Unsupported(Exception):
    pass


class NotHounsfieldError(ValueError):
    """The header's rescale or padding cannot give Hounsfield units (NaN, 0, infinite or huge
    slope or intercept; padding that covers every pixel). The message completes the file name:
    "<name> has RescaleSlope nan, which is not a number, so …"."""


def _damage_message(name: str, exc: Exception) -> str:
    text = str(exc).lower()
    if (
        "length" in text
        or "truncat" in text
        or "end of" in text
        or "buffer" in text
        or "less than expected" in text  # pydicom 3: "number of bytes … is less than expected"
    ):
        return f"{name} is truncated (its pixel data is incomplete) and was skipped"
    if "decod" in text or "plugin" in text or "handler" in text:
        return f"{name} uses a compression that could not be decoded and was skipped"
    return f"{name} is damaged and was skipped"


def _to_raw_slice(name: str, ds: pydicom.Dataset) -> RawSlice:
    modality = _text(ds, "Modality").upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if modality == "CT":
        if frames > 1:
            raise _Unsupported(
                f"{name} is a multi-frame (Enhanced CT) object, which this tool cannot read yet"
            )
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise _Unsupported(f"{name} is a colour image, not a CT slice")
        if rows > MAX_SLICE_SIDE or columns > MAX_SLICE_SIDE:
            raise _Unsupported(
                f"{name} declares a {rows}×{columns} image, larger than the "
                f"{MAX_SLICE_SIDE}×{MAX_SLICE_SIDE} this tool reads (a head CT slice is 512×512); "
                "it was skipped without decoding"
            )
    hu = to_hu(ds) if modality == "CT" else None  # other modalities are refused, not decoded
    if hu is not None:
        rows, columns = hu.shape
    header = {k: _text(ds, k) for k in HEADER_KEYWORDS}
    number = ds.get("InstanceNumber")
    try:
        instance_number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        instance_number = None
    meta = getattr(ds, "file_meta", None)
    return RawSlice(
        name=name,
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        # De-identified exports (RSNA among them) keep the class only in the file meta.
        sop_class_uid=_text(ds, "SOPClassUID") or str(getattr(meta, "MediaStorageSOPClassUID", "")),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        modality=modality or "unknown",
        instance_number=instance_number,
        position=_floats(ds, "ImagePositionPatient", 3),  # type: ignore[arg-type]
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        rows=rows,
        columns=columns,
        pixel_spacing=_floats(ds, "PixelSpacing", 2),  # type: ignore[arg-type]
        slice_thickness=_float(ds, "SliceThickness"),
        gantry_tilt=_float(ds, "GantryDetectorTilt"),
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
        transfer_syntax=str(getattr(meta, "TransferSyntaxUID", "")),
        header=header,
        hu=hu,
    )


def to_hu(ds: pydicom.Dataset) -> np.ndarray:
    """Stored pixel values → int16 Hounsfield units, clipped to [-1024, 32767].

    HU = stored × RescaleSlope + RescaleIntercept. Pixels equal to PixelPaddingValue (or within
    PixelPaddingValue..PixelPaddingRangeLimit) are outside the scan and become air.

    The RSNA 2019 fix: some 12-bit unsigned files (BitsStored 12, PixelRepresentation 0) carry
    an intercept above -100 with values that wrap at 4096; as in the challenge's public kernels
    the stored value is shifted by 1000 modulo 4096 and the intercept set to -1000.

    Raises NotHounsfieldError rather than guess when the header makes HU impossible: an absent
    slope or intercept reads as 1 or 0, but a NaN, infinite or zero one, a rescale that puts the
    pixels beyond ±65536 HU, or padding that covers every pixel would give a wrong image silently.
    """
    stored = ds.pixel_array
    if stored.ndim != 2:
        raise _Unsupported("not a single-frame greyscale image")
    slope = _rescale(ds, "RescaleSlope", 1.0)
    intercept = _rescale(ds, "RescaleIntercept", 0.0)
    values = stored.astype(np.int32)
    padding = _padding_mask(ds, values)
    bits_stored = int(ds.get("BitsStored", 16) or 16)
    if bits_stored == 12 and int(ds.get("PixelRepresentation", 0)) == 0 and intercept > -100:
        values += 1000
        values[values >= 4096] -= 4096
        intercept = -1000.0
    _check_hu_range(ds, values if padding is None else values[~padding], slope, intercept)
    if slope == 1.0 and float(intercept).is_integer():
        hu = values + int(intercept)
    else:
        hu = np.rint(values * np.float32(slope) + np.float32(intercept))
    hu = np.clip(hu, HU_MIN, HU_MAX).astype(np.int16)
    if padding is not None:
        hu[padding] = HU_MIN
    return hu


def _rescale(ds: pydicom.Dataset, keyword: str, default: float) -> float:
    """RescaleSlope or RescaleIntercept: ``default`` when absent, a NotHounsfieldError when
    present but not a finite number (or a zero slope)."""
    value = ds.get(keyword)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise NotHounsfieldError(
            _not_hu(f"{keyword} {display_name(str(value), 24)}", "which is not a number")
        ) from None
    if np.isnan(number):
        raise NotHounsfieldError(_not_hu(f"{keyword} {value}", "which is not a number"))
    if not np.isfinite(number):
        raise NotHounsfieldError(_not_hu(f"{keyword} {value}", "which is not a finite number"))
    if keyword == "RescaleSlope" and number == 0:
        raise NotHounsfieldError(
            _not_hu(f"{keyword} {value}", "which would give every pixel the same value")
        )
    return number


def _not_hu(what: str, why: str) -> str:
    return f"has {what}, {why}, so its pixels cannot be read as Hounsfield units"


def _check_hu_range(
    ds: pydicom.Dataset, values: np.ndarray, slope: float, intercept: float
) -> None:
    """The rescaled pixels (padding left out) must lie within ±HU_PLAUSIBLE; beyond it, the
    clip to int16 would silently turn them into a flat image (1e308 × stored → 32767 HU)."""
    if values.size == 0:
        return
    ends = [float(values.min()) * slope + intercept, float(values.max()) * slope + intercept]
    low, high = min(ends), max(ends)
    if np.isfinite(low) and np.isfinite(high) and -HU_PLAUSIBLE <= low <= high <= HU_PLAUSIBLE:
        return
    raise NotHounsfieldError(
        _not_hu(
            f"RescaleSlope {ds.get('RescaleSlope', 1)} and RescaleIntercept "
            f"{ds.get('RescaleIntercept', 0)}",
            f"which would put its pixels between {low:.4g} and {high:.4g} HU, beyond the "
            f"±{HU_PLAUSIBLE} that any CT value lies within",
        )
    )


def _padding_mask(ds: pydicom.Dataset, values: np.ndarray) -> np.ndarray | None:
    pad = ds.get("PixelPaddingValue")
    if pad is None:
        return None
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    bits = int(ds.get("BitsAllocated", 16) or 16)

    def as_stored(v: object) -> int:
        n = int(v)  # type: ignore[call-overload]
        return n - (1 << bits) if signed and n >= 1 << (bits - 1) else n

    low = as_stored(pad)
    limit = ds.get("PixelPaddingRangeLimit")
    high = as_stored(limit) if limit is not None else low
    low, high = min(low, high), max(low, high)
    mask = (values >= low) & (values <= high)
    if mask.all():
        span = (
            f"PixelPaddingValue {low}"
            if low == high
            else f"PixelPaddingValue range ({low} to {high})"
        )
        raise NotHounsfieldError(
            f"has a {span} that covers every pixel, which would turn the whole slice into air"
        )
    return mask if mask.any() else None
