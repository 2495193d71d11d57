"""The bleed outline as a DICOM Segmentation (SEG), so that a PACS viewer can overlay it on the
source series.

Why a SEG beside the Secondary Capture: the Secondary Capture is a picture of one slice; the SEG
is the outline itself, voxel for voxel on every slice, in the patient's coordinates, which a
viewer lays over the original images and scrolls with them. It is built with highdicom
(``highdicom.seg.Segmentation``): BINARY, one segment "Hemorrhage" (SNOMED CT: category
Morphologically abnormal structure, type Hemorrhage), made by an automatic algorithm named by
the model card, with "research use only" in its series and content descriptions.

The loader keeps no pydicom datasets (only Study / Series / SliceInfo), so the source images are
described to highdicom by minimal datasets built from them (``source_datasets``): the attributes
highdicom copies or checks (patient and study modules, SOP class and instance, geometry). UIDs go
through ``valid_uid``, the same as in every object this tool writes, so the SEG lands in the same
study as the Secondary Capture and references the same images.

Only slices with blood carry a frame (highdicom omits empty frames); the SEG still references
every image of the source series. An empty mask gives no SEG (``EmptyOutlineError``): a
Segmentation that segments nothing would show as an empty overlay in the PACS, and a reader
could take it for a negative finding; "no outline" is said in words by the PDF and the
Secondary Capture instead.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from core.dicom.study import Series, Study
from core.dicom.uids import frame_of_reference_uid, valid_uid
from core.errors import ICHError
from core.imaging.volume import BleedEstimate
from core.model.integrity import UNVERIFIED_LABEL
from core.reports.pdf import ReportInput
from core.reports.secondary_capture import MANUFACTURER

SERIES_DESCRIPTION = "ICH review (research use only) bleed outline"
#: Content Description is LO (64 characters at most).
CONTENT_DESCRIPTION = "RESEARCH USE ONLY: model's bleed outline, not a diagnosis"
CONTENT_LABEL = "HEMORRHAGE"
SEGMENT_LABEL = "Hemorrhage"
#: Series number for the SEG: next to the Secondary Capture's 9901, far from scanner numbers.
SERIES_NUMBER = 9902
MODEL_NAME = "ICH review"
#: What a CT slice is when its file named no SOP class (the loader keeps CT only).
CT_IMAGE_STORAGE = pydicom.uid.CTImageStorage


class EmptyOutlineError(ICHError):
    """The mask has no voxel: there is nothing to segment, so no SEG is written."""


class UnplaceableSeriesError(ICHError):
    """The series lacks what places a mask in the patient (positions, orientation, spacing)."""


@dataclass(frozen=True)
class SegmentationInput:
    """What a SEG needs: the study and the series the mask was drawn on, the mask, the model."""

    study: Study
    series: Series
    mask: np.ndarray  # bool (slices, rows, cols), series order
    model_name: str
    model_version: str  # the weights' identity (name@sha256 prefix)

    @classmethod
    def from_report(cls, data: ReportInput) -> SegmentationInput:
        """The SEG of what a report shows (its estimate is on the study's default series)."""
        if data.estimate is None:
            raise EmptyOutlineError("No bleed outline was estimated for this study: no DICOM SEG.")
        name = data.model_name
        if not data.prediction.model_verified:  # the PACS reader sees it as the algorithm's name
            name = f"{name} ({UNVERIFIED_LABEL})"
        return cls.from_estimate(
            data.study, data.study.default_series, data.estimate, name, data.model_identity
        )

    @classmethod
    def from_estimate(
        cls, study: Study, series: Series, estimate: BleedEstimate, model_name: str, version: str
    ) -> SegmentationInput:
        return cls(study, series, np.asarray(estimate.mask, dtype=bool), model_name, version)


def _da(study: Study) -> str:
    return study.study_date.strftime("%Y%m%d") if study.study_date else ""


def source_datasets(study: Study, series: Series) -> list[pydicom.Dataset]:
    """Minimal datasets describing the series' images to highdicom, one per slice in series
    order: patient and study modules from ``study``, SOP class and instance per slice, and the
    geometry (position, orientation, pixel spacing, slice thickness, frame of reference).

    The frame of reference is the series' own, or, when the source has none (RSNA's files), a
    stable UID derived from the series UID (``frame_of_reference_uid``): every object this tool
    writes for the series then shares it. A series without slice thickness is given its median
    slice spacing, which is what the outline's volume assumes for it too."""
    if series.orientation is None or series.pixel_spacing is None:
        raise UnplaceableSeriesError(
            "The series gives no orientation or pixel spacing: its outline cannot be placed in "
            "the patient, so no DICOM SEG is written."
        )
    if any(s.position is None for s in series.slices):
        raise UnplaceableSeriesError(
            "Some slices give no position (ImagePositionPatient): the outline cannot be placed "
            "in the patient, so no DICOM SEG is written."
        )
    thickness = series.slice_thickness or series.spacing
    if not thickness:
        raise UnplaceableSeriesError(
            "The series gives neither slice thickness nor spacing: no DICOM SEG is written."
        )
    _, rows, cols = series.shape
    shared = pydicom.Dataset()
    shared.PatientName = study.patient_name
    shared.PatientID = study.patient_id
    shared.PatientBirthDate = ""
    shared.PatientSex = ""
    shared.StudyInstanceUID = valid_uid(study.study_instance_uid)
    shared.StudyID = ""
    shared.StudyDate = _da(study)
    shared.StudyTime = study.study_time
    shared.AccessionNumber = study.accession_number
    shared.ReferringPhysicianName = ""
    shared.Modality = series.modality
    shared.SeriesInstanceUID = valid_uid(series.series_instance_uid)
    shared.FrameOfReferenceUID = frame_of_reference_uid(
        series.series_instance_uid, series.frame_of_reference_uid
    )
    shared.PositionReferenceIndicator = ""
    shared.Rows, shared.Columns = rows, cols
    shared.ImageOrientationPatient = [float(v) for v in series.orientation]
    shared.PixelSpacing = [float(v) for v in series.pixel_spacing]
    shared.SliceThickness = float(thickness)
    out = []
    for s in series.slices:
        ds = pydicom.Dataset()
        ds.update(shared)
        ds.SOPClassUID = s.sop_class_uid or CT_IMAGE_STORAGE
        ds.SOPInstanceUID = valid_uid(s.sop_instance_uid)
        ds.ImagePositionPatient = [float(v) for v in s.position]  # type: ignore[union-attr]
        if s.instance_number is not None:
            ds.InstanceNumber = s.instance_number
        out.append(ds)
    return out


def segment_description(model_name: str, model_version: str) -> hd.seg.SegmentDescription:
    """Segment 1, "Hemorrhage": what it is (SNOMED CT) and which algorithm drew it."""
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Hemorrhage,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=model_name[:64],
            family=codes.cid7162.ArtificialIntelligence,
            version=model_version[:64],
        ),
        anatomic_regions=[codes.SCT.Head],
    )


def segmentation(data: SegmentationInput) -> hd.seg.Segmentation:
    """The SEG dataset (checked by highdicom's constructor); EmptyOutlineError for an empty
    mask, UnplaceableSeriesError for a series that cannot be placed in the patient."""
    mask = np.asarray(data.mask, dtype=bool)
    if mask.shape != data.series.shape:
        raise ValueError(f"a mask {mask.shape} for a series of {data.series.shape}")
    if not mask.any():
        raise EmptyOutlineError(
            "The model outlined no bleed on this study: there is nothing to overlay, so no "
            "DICOM SEG is written."
        )
    seg = hd.seg.Segmentation(
        source_images=source_datasets(data.study, data.series),
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(data.model_name, data.model_version)],
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=data.model_version[:64] or "unknown",
        device_serial_number="none",
        content_description=CONTENT_DESCRIPTION,
        content_label=CONTENT_LABEL,
        omit_empty_frames=True,
    )
    seg.SeriesDescription = SERIES_DESCRIPTION
    # A head is not a paired organ: naming it settles General Series' Type 2C Laterality.
    seg.BodyPartExamined = "HEAD"
    return seg


def segmentation_bytes(data: SegmentationInput) -> bytes:
    buf = io.BytesIO()
    segmentation(data).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def mask_from_segmentation(seg: pydicom.Dataset, series: Series) -> np.ndarray:
    """The mask (slices, rows, cols) a SEG holds, on ``series``' slices: each frame is put back
    on the slice whose SOP Instance UID (as ``valid_uid`` writes it) it references; slices
    without a frame are empty. What a reader of the file gets, used to check the SEG."""
    if not isinstance(seg, hd.seg.Segmentation):
        seg = hd.seg.Segmentation.from_dataset(seg, copy=True)
    index = {valid_uid(s.sop_instance_uid): s.index for s in series.slices}
    uids = [uid for _, _, uid in seg.get_source_image_uids()]
    referenced = [u for u in uids if u in index]
    out = np.zeros(series.shape, dtype=bool)
    if not referenced:
        return out
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=referenced,
        segment_numbers=[1],
        ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True,
    )
    for uid, plane in zip(referenced, pixels, strict=True):
        out[index[uid]] = plane[..., 0] > 0
    return out


def report_segmentation(data: ReportInput) -> tuple[bytes | None, str]:
    """The SEG of what a report shows, or None and why not (in words, for the user): what
    both the viewer's download and ``core.predict --report-dir`` offer."""
    try:
        return segmentation_bytes(SegmentationInput.from_report(data)), ""
    except ICHError as exc:  # no outline, or a series that cannot be placed in the patient
        return None, str(exc)
