"""``python -m core.quantize [--weights CARD.json] [--data DIR]``: build the int8 model.

Quantizes the installed model (or ``--weights``) to int8 with NNCF on a fixed set of 128
rsna_png training slices (core.training.int8_check says which), measures it against torch fp32
on the validation split (the AUC of every label, the largest |Δp| of the probabilities and of
the bleed map) and, when it passes the accuracy guard, keeps it in the app's data folder beside
the OpenVINO IR, where the engine finds it: the next start offers int8 beside bf16/f32 and the
speed probe decides. Refused, nothing is kept and the engine goes on as before. The app never
needs the data at run time; this command does, once per weights × OpenVINO × NNCF version.

Exit status: 0 kept, 1 refused by the guard, 2 no usable model or data.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from core.errors import ICHError
from core.inference.openvino_backend import CHECK_TOLERANCE, nncf_version
from core.labels import LABELS
from core.model.checkpoint import find_default_checkpoint, load_checkpoint
from core.shared_data import shared_data_root
from core.training.int8_check import MAX_DAUC, Int8Build, build_int8

DEFAULT_DATA = shared_data_root()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m core.quantize",
        description=(
            "Quantize the model to int8 (NNCF) on real training slices, hold it to the "
            "accuracy guard on the validation split, and keep it for the OpenVINO engine."
        ),
    )
    p.add_argument("--weights", type=Path, help="model card (NAME.json); default: installed")
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="the shared data's root, holding rsna_png/ and hemseg/ (default: $ICH_SHARED_DATA, "
        "else ../shared/data)",
    )
    p.add_argument(
        "--allow-unverified",
        action="store_true",
        help="quantize a model that is not one this version shipped",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=CHECK_TOLERANCE,
        help=f"largest |Δp| allowed against torch fp32 (default {CHECK_TOLERANCE})",
    )
    p.add_argument(
        "--keep-refused",
        action="store_true",
        help="keep an int8 model the guard refused, marked so, for measuring (python -m "
        "core.bench infer times it); the engine never uses it",
    )
    p.add_argument("--json", type=Path, help="also write the record (figures, verdict) here")
    return p


def report(build: Int8Build) -> str:
    """The figures for people: the calibration set, the load check, the validation AUCs."""
    r = build.record
    v = r["validation"]
    lines = [
        f"calibration: {r['calibration']['slices']} slices "
        f"({r['calibration']['positive_any']} with hemorrhage), {r['calibration']['source']}; "
        f"quantized in {r['calibration']['quantize_seconds']:.0f} s",
        f"load check (probe phantom): max |Δp| {r['load_check']['max_dp']:.4f}, "
        f"bleed map {r['load_check']['max_dmap']:.4f}",
        f"validation: {v['slices']} slices, {v['split']}",
        f"  {'label':<18} {'positives':>9} {'AUC torch fp32':>15} {'AUC int8':>9} {'Δ':>8}",
    ]
    for label in LABELS:
        a, b = v["auc_torch_fp32"][label], v["auc_int8"][label]
        shown = f"{a:15.4f} {b:9.4f} {b - a:+8.4f}" if a is not None and b is not None else "n/a"
        lines.append(f"  {label:<18} {v['positives'][label]:>9} {shown}")
    lines.append(
        f"  max |Δp| {v['max_dp']:.4f}, bleed map max |Δp| {v['max_dmap']:.4f}; largest AUC "
        f"change on labels with >= {r['guard']['min_positives']} positives "
        f"({', '.join(v['guarded_labels'])}): {v['max_dauc_guarded'] or 0:.4f}"
    )
    g = r["guard"]
    if build.passed:
        lines.append(f"int8 kept in {build.folder}")
    else:
        lines.append(
            f"int8 REFUSED (guard: |Δp| <= {g['tolerance']:g}, map cells <= "
            f"{g.get('map_tolerance', g['tolerance']):g}, AUC change <= {g['max_dauc']:g}): "
            + "; ".join(build.reasons)
        )
        if build.folder is not None:
            lines.append(f"kept, marked refused, for measuring only, in {build.folder}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if nncf_version() is None:
        print("NNCF is not installed (pip install nncf)", file=sys.stderr)
        return 2
    card = args.weights or find_default_checkpoint()
    if card is None:
        print("no installed model: pass --weights CARD.json", file=sys.stderr)
        return 2
    if not (args.data / "rsna_png" / "images").is_dir():
        print(f"no rsna_png folder under {args.data} (--data)", file=sys.stderr)
        return 2
    try:
        loaded = load_checkpoint(card, allow_unverified=args.allow_unverified)
    except ICHError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    build = build_int8(
        loaded,
        args.data,
        tolerance=args.tolerance,
        max_dauc=MAX_DAUC,
        keep_refused=args.keep_refused,
    )
    print(report(build))
    if args.json is not None:
        args.json.write_text(json.dumps(build.record, indent=1, sort_keys=True), "utf-8")
    return 0 if build.passed else 1


if __name__ == "__main__":
    sys.exit(main())
