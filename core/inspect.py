"""``python -m core.inspect STUDY.zip|FOLDER [--json] [--show-identity]``: what an upload holds.

For a user who wants to know, before triage, which studies and series a zip contains, how its
slices are ordered along the head, and every problem found (skipped files, gaps, duplicates).
JSON keys are DICOM keywords where one exists. Patient name and ID are shown only with
``--show-identity``; otherwise the installation's pseudonym stands in (core.review.pseudonym:
the same one the dashboard and the reports show).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from core.dicom.study import Series, Study, load_studies
from core.errors import ICHError
from core.review.pseudonym import Pseudonymizer, for_installation


def series_summary(series: Series, is_default: bool, with_slices: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "SeriesInstanceUID": series.series_instance_uid,
        "SeriesNumber": series.series_number,
        "SeriesDescription": series.description,
        "Modality": series.modality,
        "default": is_default,
        "NumberOfSlices": series.n_slices,
        "Rows": series.shape[1],
        "Columns": series.shape[2],
        "PixelSpacing": list(series.pixel_spacing) if series.pixel_spacing else None,
        "SliceThickness": series.slice_thickness,
        "SpacingBetweenSlices": None if series.spacing is None else round(series.spacing, 4),
        "GantryDetectorTilt": series.tilt_deg,
        "ImageOrientationPatient": list(series.orientation) if series.orientation else None,
        "ConvolutionKernel": series.convolution_kernel,
        "Manufacturer": series.manufacturer,
        "TransferSyntaxUID": list(series.transfer_syntaxes),
        "warnings": list(series.warnings),
    }
    if with_slices:
        out["slices"] = [
            {
                "index": s.index,
                "SOPInstanceUID": s.sop_instance_uid,
                "InstanceNumber": s.instance_number,
                "ImagePositionPatient": list(s.position) if s.position else None,
                "z": round(s.z, 4),
            }
            for s in series.slices
        ]
    return out


def study_summary(study: Study, names: Pseudonymizer | None = None) -> dict[str, Any]:
    """The study as JSON-ready data; ``names`` gives the pseudonym, and without it (the user
    asked for identity) the name, ID and accession number are shown."""
    default_uid = study.default_series.series_instance_uid
    out: dict[str, Any] = {"StudyInstanceUID": study.study_instance_uid}
    if names is None:
        out |= {
            "PatientID": study.patient_id,
            "PatientName": study.patient_name,
            "AccessionNumber": study.accession_number,
        }
    else:
        out["patient"] = names.study_label(study)
    out |= {
        "StudyDate": study.study_date.isoformat() if study.study_date else None,
        "StudyDescription": study.study_description,
        "warnings": list(study.warnings),
        "series": [series_summary(s, s.series_instance_uid == default_uid) for s in study.series],
    }
    return out


NOT_RECORDED = "not recorded"


def _or_missing(value: object, unit: str = "", *, quote: bool = False) -> str:
    """A header field as text, or "not recorded" where the file leaves it empty.

    >>> _or_missing("", " mm"), _or_missing(5.0, " mm"), _or_missing("HEAD", quote=True)
    ('not recorded', '5.0 mm', "'HEAD'")
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return NOT_RECORDED
    return f"'{value}'" if quote else f"{value}{unit}"


def format_text(summaries: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for st in summaries:
        who = st.get("patient") or f"{st.get('PatientName', '')} {st.get('PatientID', '')}".strip()
        lines.append(f"Study {st['StudyInstanceUID']}  {who}  date {st['StudyDate'] or '—'}")
        lines += [f"  ! {w}" for w in st["warnings"]]
        for se in st["series"]:
            mark = "*" if se["default"] else " "
            spacing = se["PixelSpacing"] and "×".join(f"{v:.3f}" for v in se["PixelSpacing"])
            number = se["SeriesNumber"]
            lines.append(
                f" {mark}Series {_or_missing(number)} {se['SeriesInstanceUID']} "
                f"{_or_missing(se['Modality'])} "
                f"{_or_missing(se['SeriesDescription'], quote=True)}: "
                f"{se['NumberOfSlices']} slices {se['Rows']}×{se['Columns']}, "
                f"pixel {_or_missing(spacing, ' mm')}, "
                f"thickness {_or_missing(se['SliceThickness'], ' mm')}, "
                f"spacing {_or_missing(se['SpacingBetweenSlices'], ' mm')}, "
                f"tilt {_or_missing(se['GantryDetectorTilt'], '°')}"
            )
            lines += [f"    ! {w}" for w in se["warnings"]]
            for sl in se["slices"]:
                lines.append(f"    {sl['index']:4d}  z={sl['z']:9.2f}  {sl['SOPInstanceUID']}")
    lines.append("(* = series shown by default)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.inspect", description=__doc__.split("\n")[2]
    )
    parser.add_argument("source", help="a study zip, a folder of DICOM files, or one DICOM file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--show-identity", action="store_true", help="show patient name, ID and accession number"
    )
    args = parser.parse_args(argv)
    try:
        studies = load_studies(args.source)
    except ICHError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        names = None if args.show_identity else for_installation()
    except ICHError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summaries = [study_summary(s, names) for s in studies]
    try:
        print(json.dumps(summaries, indent=2) if args.json else format_text(summaries))
        sys.stdout.flush()
    except BrokenPipeError:  # `… | head` closed the pipe: what it wanted was printed
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
