"""The model's findings as a DICOM Comprehensive SR (TID 1500 measurement report), built with
highdicom, so that a PACS keeps them in the patient's study and other software can read them.

Why TID 1500: it is the standard template for "measurements made by an algorithm on images",
which is what the six probabilities and the bleed volume are, and highdicom both writes and
parses it. The Secondary Capture (core.reports.secondary_capture) is what people look at; this
is what programs read. It carries:

* one measurement group, tracked by a UID, with the algorithm's name and version and, as the
  algorithm's parameters, the research-use notice and the operating threshold;
* the six study-level probabilities (label order of core.labels), unit "no units";
* the study call: whether P(any) reaches the operating threshold (Yes/No);
* the estimated bleed volume in mL, when it was estimated;
* the source CT images as evidence (every slice of the series scored).

The concepts the standard has no code for (a probability of each subtype, the study call) are
coded in this tool's own scheme, ``99ICHR`` (a private scheme is what the standard asks for in
that case). Every UID of a source object goes through core.dicom.uids.valid_uid, so the SR,
the Secondary Capture and the SEG of one study land in the same study on the PACS.
"""

from __future__ import annotations

import io

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

from core.dicom.study import Series, Study
from core.dicom.uids import valid_uid
from core.imaging.volume import BleedEstimate
from core.inference.predictor import StudyPrediction
from core.labels import LABELS
from core.model.integrity import UNVERIFIED_LABEL
from core.notice import CONFIRM, NOTICE
from core.reports.secondary_capture import MANUFACTURER

SERIES_DESCRIPTION = "ICH review (research use) findings"
#: Series number of the SR, beside the Secondary Capture's 9901.
SERIES_NUMBER = 9902
#: This tool's coding scheme for concepts the standard has no code for.
SCHEME = "99ICHR"
_NAMES = {
    "any": "any intracranial hemorrhage",
    "epidural": "epidural hemorrhage",
    "intraparenchymal": "intraparenchymal hemorrhage",
    "intraventricular": "intraventricular hemorrhage",
    "subarachnoid": "subarachnoid hemorrhage",
    "subdural": "subdural hemorrhage",
}
PROBABILITY_CODES = {
    label: hd.sr.CodedConcept(f"P-{label.upper()[:12]}", SCHEME, f"Probability of {_NAMES[label]}")
    for label in LABELS
}
STUDY_CALL = hd.sr.CodedConcept("CALL-ANY", SCHEME, "Hemorrhage at operating threshold")
BLEED_VOLUME = hd.sr.CodedConcept("VOL-BLEED", SCHEME, "Estimated hemorrhage volume")
NO_UNITS = codes.UCUM.NoUnits
MILLILITER = hd.sr.CodedConcept("mL", "UCUM", "milliliter")
FINDING_TYPE = codes.SCT.IntracranialHemorrhage


#: The algorithm parameter that marks findings of a model this version does not ship.
UNVERIFIED_PARAMETER = f"{UNVERIFIED_LABEL.upper()}: not a model shipped with ICH review"


def structured_report(
    study: Study,
    prediction: StudyPrediction,
    estimate: BleedEstimate | None,
    *,
    threshold: float | None,
    model_name: str,
    model_version: str,
) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR of one study's findings (highdicom validates it as it builds)."""
    series = study.series_by_uid(prediction.series_instance_uid)
    notice = f"{NOTICE} {CONFIRM}"
    parameters = [notice]
    if not prediction.model_verified:  # said where a PACS user reads it: series and algorithm
        parameters.append(UNVERIFIED_PARAMETER)
    if threshold is not None:
        parameters.append(f"Operating threshold for P(any): {threshold:.4f}")
    algorithm = hd.sr.AlgorithmIdentification(
        name=model_name[:64], version=model_version[:64], parameters=parameters
    )
    measurements = [
        hd.sr.Measurement(
            name=PROBABILITY_CODES[label],
            value=round(float(prediction.study_scores[label]), 6),
            unit=NO_UNITS,
            algorithm_id=algorithm,
        )
        for label in LABELS
    ]
    if estimate is not None:
        measurements.append(
            hd.sr.Measurement(
                name=BLEED_VOLUME,
                value=round(float(estimate.volume_ml), 3),
                unit=MILLILITER,
                algorithm_id=algorithm,
            )
        )
    evaluations = []
    if threshold is not None:
        positive = prediction.study_scores["any"] >= threshold
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=STUDY_CALL, value=codes.SCT.Yes if positive else codes.SCT.No
            )
        )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier="ICH study-level findings"
        ),
        finding_type=FINDING_TYPE,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=valid_uid(f"ich-review-model:{model_name}:{model_version}"),
            name=model_name[:64],
            manufacturer_name=MANUFACTURER[:64],
            model_name=model_name[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.HeadCT,
        imaging_measurements=[group],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=_evidence(study, series),
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # an algorithm's output, not verified by a person
    )
    sr.SeriesDescription = (
        SERIES_DESCRIPTION
        if prediction.model_verified
        else f"{SERIES_DESCRIPTION} ({UNVERIFIED_LABEL})"
    )[:64]  # LO
    return sr


def _evidence(study: Study, series: Series) -> list[pydicom.Dataset]:
    """One small dataset per source slice: what highdicom needs to reference it and to copy the
    patient and study attributes (the PACS files the SR by them)."""
    items = []
    for s in series.slices:
        ds = pydicom.Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the notice's dash, any patient name
        ds.StudyInstanceUID = valid_uid(study.study_instance_uid)
        ds.SeriesInstanceUID = valid_uid(series.series_instance_uid)
        ds.SOPInstanceUID = valid_uid(s.sop_instance_uid)
        ds.SOPClassUID = s.sop_class_uid or pydicom.uid.CTImageStorage
        ds.Modality = series.modality
        ds.PatientID = study.patient_id
        ds.PatientName = study.patient_name
        ds.PatientBirthDate = None
        ds.PatientSex = None
        ds.AccessionNumber = study.accession_number
        ds.StudyID = None
        ds.StudyDate = study.study_date.strftime("%Y%m%d") if study.study_date else None
        ds.StudyTime = study.study_time or None
        ds.ReferringPhysicianName = None
        items.append(ds)
    return items


def structured_report_bytes(sr: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def read_findings(data: bytes) -> dict[str, float | str | None]:
    """The findings back from an SR file this tool wrote, as highdicom parses it: the six
    probabilities by label, the call ('Yes'/'No', None without a threshold), the bleed volume
    in mL (None when not estimated), the algorithm's name and version, the notice, and the
    model's status ("verified" or "unverified model")."""
    sr = hd.sr.srread(io.BytesIO(data))
    report = hd.sr.MeasurementReport.from_sequence([sr])
    group = report.get_image_measurement_groups()[0]
    out: dict[str, float | str | None] = {"call": None, "volume_ml": None}
    by_code = {code.value: label for label, code in PROBABILITY_CODES.items()}
    for m in group.get_measurements():
        if m.name.value in by_code:
            out[by_code[m.name.value]] = float(m.value)
        elif m.name.value == BLEED_VOLUME.value:
            out["volume_ml"] = float(m.value)
    for q in group.get_qualitative_evaluations():
        if q.name.value == STUDY_CALL.value:
            out["call"] = str(getattr(q.value, "meaning", q.value))
    texts: dict[str, list[str]] = {}
    for item in group[0].ContentSequence:
        if item.ValueType == "TEXT":
            code = item.ConceptNameCodeSequence[0].CodeValue
            texts.setdefault(code, []).append(str(item.TextValue))
    out["algorithm"] = texts.get(codes.DCM.AlgorithmName.value, [None])[0]
    out["version"] = texts.get(codes.DCM.AlgorithmVersion.value, [None])[0]
    parameters = texts.get(codes.DCM.AlgorithmParameters.value, [])
    out["notice"] = parameters[0] if parameters else None
    out["model_status"] = UNVERIFIED_LABEL if UNVERIFIED_PARAMETER in parameters else "verified"
    return out
