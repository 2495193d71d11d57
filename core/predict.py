"""``python -m core.predict STUDY.zip [...] [--json OUT] [--cam-dir DIR] [--report-dir DIR]
[--backend torch|openvino|auto]``.

Scores every study in the given zips or folders with the installed model (the newest card in
``$ICH_WEIGHTS``, else in weights/, as the dashboard; or ``--weights CARD.json``), prints one
line per study, and can write per-slice probabilities as JSON and Grad-CAM overlays as PNG, for
review outside the dashboard or for batch runs. ``--report-dir`` writes per study the PDF
report, the DICOM Secondary Capture of the key image and the DICOM SEG of the bleed outline
(none when nothing is outlined: the reason is printed and in the JSON).

Exit codes: 0 done; 1 an output file could not be written; 2 the input cannot be read as CT;
3 no usable model (missing, damaged, not verified and no ``--allow-unverified``, or a GPU
requested where there is none; see core.model.integrity). A model loaded with
``--allow-unverified`` is named "unverified model" in the table, the JSON and the reports.
Messages are written for the person at the terminal, never as tracebacks. Patient names and
IDs are never printed or written: studies are named by their StudyInstanceUID, and PNG file
names are built from sanitized UIDs, never from the uploaded file names. The PDF reports name
the patient by the installation's pseudonym (core.review.pseudonym, the same one the dashboard
shows), or by name and ID with ``--show-identity``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from core.dicom.study import Study, load_studies
from core.errors import ICHError, ModelError
from core.imaging.volume import BleedEstimate
from core.imaging.windowing import BRAIN
from core.inference.openvino_backend import BACKEND_ENV, BACKENDS
from core.inference.prediction_json import dumps, predictor_document, write_prediction_json
from core.inference.predictor import (
    IN_TRAINING_NOTE,
    STUDY_BY_MAX,
    Predictor,
    ProgressCallback,
    StudyPrediction,
)
from core.labels import LABELS, SHORT_NAMES
from core.model.checkpoint import load_checkpoint
from core.model.gradcam import render_overlay
from core.model.integrity import UNVERIFIED_LABEL
from core.notice import NOTICE
from core.reports.pdf import render_pdf, report_input
from core.reports.secondary_capture import secondary_capture_bytes
from core.reports.segmentation import report_segmentation
from core.review.pseudonym import Pseudonymizer, for_installation

EXIT_OK = 0
EXIT_OUTPUT = 1
EXIT_INPUT = 2
EXIT_MODEL = 3


def safe_name(uid: str, limit: int = 64) -> str:
    """A UID as a file-name part: letters, digits, '.', '_', '-' only, never starting with a dot;
    a short hash is appended when anything had to change, so two UIDs never share a file."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", uid).strip("._-")[:limit]
    if cleaned == uid and cleaned:
        return cleaned
    digest = hashlib.sha256(uid.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned or 'uid'}-{digest}"


def write_heatmaps(
    predictor: Predictor, study: Study, prediction: StudyPrediction, cam_dir: Path
) -> list[dict[str, object]]:
    """Grad-CAM overlays (brain window) of the peak slice for 'any' and for the top subtype."""
    series = study.default_series
    written: list[dict[str, object]] = []
    for label in dict.fromkeys(("any", prediction.top_subtype)):
        index = prediction.peak_slice[label]
        heatmap = predictor.explain(series, index, label)
        rgb = render_overlay(series.hu[index], heatmap, BRAIN.level, BRAIN.width)
        # 1-based like the viewer's "slice k of N"; the JSON keeps the 0-based index
        name = f"{safe_name(study.study_instance_uid)}_slice{index + 1:03d}_{label}.png"
        Image.fromarray(rgb).save(cam_dir / name)
        written.append(
            {
                "label": label,
                "slice_index": index,
                "SOPInstanceUID": series.slices[index].sop_instance_uid,
                "probability": round(heatmap.probability, 6),
                "file": name,
            }
        )
    return written


def write_reports(
    predictor: Predictor,
    study: Study,
    prediction: StudyPrediction,
    estimate: BleedEstimate | None,
    folder: Path,
    patient: str,
) -> tuple[list[str], list[str]]:
    """The study's PDF report, DICOM Secondary Capture and, when there is an outline, the DICOM
    SEG of the bleed outline; file names from the sanitized UID, never from uploaded names.
    ``patient`` is the label the user chose (pseudonym or identity). The command line has no
    reviews: the reports say none was recorded. Returns (files written, notes: why a SEG was
    not written)."""
    data = report_input(study, prediction, predictor, estimate, [], patient)
    stem = safe_name(study.study_instance_uid)
    pdf, dcm, seg = f"{stem}_report.pdf", f"{stem}_key-image.dcm", f"{stem}_bleed-seg.dcm"
    (folder / pdf).write_bytes(render_pdf(data))
    (folder / dcm).write_bytes(secondary_capture_bytes(data))
    seg_data, why_not = report_segmentation(data)
    if seg_data is None:
        if estimate is None:
            why_not = "No bleed outline was estimated (--no-volume): no DICOM SEG."
        return [pdf, dcm], [why_not]
    (folder / seg).write_bytes(seg_data)
    return [pdf, dcm, seg], []


def format_table(predictor: Predictor, rows: list[StudyPrediction]) -> str:
    """One line per study: slice count, the six study-level probabilities, the peaks."""
    width = max([len("StudyInstanceUID")] + [len(p.study_instance_uid) for p in rows])
    head = f"{'StudyInstanceUID':<{width}}  Slices " + " ".join(f"{s:>6}" for s in SHORT_NAMES)
    lines = [
        model_line(predictor),
        # Said by the code that computed the scores (the engine's own description).
        f"Study-level probability: {rows[0].study_method if rows else STUDY_BY_MAX}.",
        head + "  Peak slice (any; 1 = first) · top subtype · ms/slice",
    ]
    for p in rows:
        scores = " ".join(f"{p.study_scores[label]:6.3f}" for label in LABELS)
        top = p.top_subtype
        speed = "cached" if p.cached else f"{1000 * p.seconds / max(1, len(p.slices)):.0f}"
        lines.append(
            f"{p.study_instance_uid:<{width}}  {len(p.slices):6d} {scores}  "
            f"{p.peak_slice['any'] + 1:4d} · {top} {p.study_scores[top]:.3f} "
            f"(slice {p.peak_slice[top] + 1}) · {speed}"
        )
    return "\n".join(lines)


def _progress(label: str) -> ProgressCallback | None:
    if not sys.stderr.isatty():
        return None

    def report(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        print(f"\r{label}: {done}/{total} slices", end=end, file=sys.stderr, flush=True)

    return report


def _load_predictor(args: argparse.Namespace) -> Predictor:
    """``--weights``, else the newest card in ``$ICH_WEIGHTS`` or weights/ (as the dashboard)."""
    allow = args.allow_unverified
    if args.weights is None:
        return Predictor.from_default(
            args.device, batch_size=args.batch_size, backend=args.backend, allow_unverified=allow
        )
    loaded = load_checkpoint(args.weights, allow_unverified=allow)
    return Predictor(loaded, args.device, batch_size=args.batch_size, backend=args.backend)


def model_line(predictor: Predictor) -> str:
    """The table's first line: which model, and loudly when it is not a verified one."""
    loaded = predictor.loaded
    line = (
        f"Model {predictor.weights_identity} ({loaded.spec.arch}, "
        f"{loaded.spec.input_size} px) on {predictor.device}, {predictor.backend_name}. {NOTICE}"
    )
    if not loaded.trust.verified:
        line = f"{UNVERIFIED_LABEL.upper()}: {loaded.trust.reason}.\n{line}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.predict",
        description="Score head-CT studies for intracranial hemorrhage (research use only).",
    )
    parser.add_argument("sources", nargs="+", metavar="STUDY", help="study zip or folder")
    parser.add_argument("--json", metavar="OUT", help="write probabilities as JSON ('-': stdout)")
    parser.add_argument("--cam-dir", type=Path, help="write Grad-CAM overlays (PNG) here")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: a GPU if present")
    parser.add_argument(
        "--weights",
        type=Path,
        help="model card (.json); default: the newest in $ICH_WEIGHTS, else in weights/",
    )
    parser.add_argument(
        "--allow-unverified",
        action="store_true",
        help="use a model that is not on the manifest or whose card fails its digest "
        "(core.model.integrity); every output then says 'unverified model'",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="slices per forward pass (default: the OpenVINO speed probe's choice, 16 under torch)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help=f"what runs the network on the CPU (default: ${BACKEND_ENV}, else auto: OpenVINO "
        "where it loads and passes its check, else torch)",
    )
    parser.add_argument(
        "--no-volume", action="store_true", help="skip the bleed mask and volume estimate"
    )
    parser.add_argument(
        "--flag-threshold",
        type=float,
        help="P(any) from which slices are outlined for the volume (default: the model's "
        "operating point, else 0.5)",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        help="write a one-page PDF report, a DICOM Secondary Capture and (when the model "
        "outlines a bleed) a DICOM SEG of the outline per study here",
    )
    parser.add_argument(
        "--show-identity", action="store_true", help="name the patient in the PDF reports"
    )
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.flag_threshold is not None and not 0.0 < args.flag_threshold < 1.0:
        parser.error("--flag-threshold must be a probability between 0 and 1")

    names: Pseudonymizer | None = None
    if args.report_dir is not None:  # the reports name the patient: the installation's key
        try:
            names = for_installation()
        except ICHError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_OUTPUT

    try:
        predictor = _load_predictor(args)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    studies: list[Study] = []
    for source in args.sources:
        try:
            studies += load_studies(source)
        except ICHError as exc:
            print(f"error: {source}: {exc}", file=sys.stderr)
            return EXIT_INPUT

    if not predictor.loaded.trust.verified:  # said also where only JSON goes to stdout
        print(f"warning: {UNVERIFIED_LABEL}: {predictor.loaded.trust.reason}", file=sys.stderr)
    for folder in (args.cam_dir, args.report_dir):
        if folder is None:
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"error: cannot create {folder}: {exc.strerror}", file=sys.stderr)
            return EXIT_OUTPUT

    predictions: list[StudyPrediction] = []
    summaries: list[dict[str, Any]] = []
    for i, study in enumerate(studies, 1):
        try:
            prediction = predictor.predict(study, _progress(f"study {i}/{len(studies)}"))
            summary = prediction.to_dict()
            summary["warnings"] = list(study.warnings) + list(study.default_series.warnings)
            summary["in_training_data"] = predictor.seen_in_training(study.study_instance_uid)
            if summary["in_training_data"]:
                summary["warnings"].append(IN_TRAINING_NOTE)
            estimate = None
            if not args.no_volume:
                estimate = predictor.localise(
                    study.default_series, prediction, threshold=args.flag_threshold
                )
                summary["bleed_estimate"] = estimate.to_dict()
                for entry, area in zip(summary["slices"], estimate.area_mm2, strict=True):
                    entry["bleed_area_mm2"] = round(area, 1)
            if args.cam_dir is not None:
                summary["heatmaps"] = write_heatmaps(predictor, study, prediction, args.cam_dir)
            if args.report_dir is not None and names is not None:
                patient = names.study_label(study, args.show_identity)
                summary["reports"], notes = write_reports(
                    predictor, study, prediction, estimate, args.report_dir, patient
                )
                if notes:
                    summary["report_notes"] = notes
        except ModelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_MODEL
        except OSError as exc:
            print(f"error: cannot write an output file: {exc}", file=sys.stderr)
            return EXIT_OUTPUT
        predictions.append(prediction)
        summaries.append(summary)

    document = predictor_document(predictor, summaries)
    if args.json == "-":
        print(dumps(document), end="")
        return EXIT_OK
    print(format_table(predictor, predictions))
    if args.json is not None:
        try:
            write_prediction_json(Path(args.json), document)
        except OSError as exc:
            print(f"error: cannot write {args.json}: {exc.strerror}", file=sys.stderr)
            return EXIT_OUTPUT
        print(f"Per-slice probabilities written to {args.json}")
    if args.cam_dir is not None:
        n = sum(len(s["heatmaps"]) for s in summaries)
        print(f"{n} Grad-CAM overlay(s) written to {args.cam_dir}")
    if args.report_dir is not None:
        n = sum(len(s["reports"]) for s in summaries)
        print(f"{n} report file(s) written to {args.report_dir}")
        for s in summaries:
            for note in s.get("report_notes", ()):
                print(f"{s['StudyInstanceUID']}: {note}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
