"""``python -m core.evaluate``: evaluate per-slice probabilities against reference labels.

The door: it parses the arguments, reads the files and hands them to core.training.evaluate
(the figures and the report are described there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.errors import InputError
from core.training.evaluate import (
    EXIT_INPUT,
    EXIT_OK,
    EXIT_OUTPUT,
    evaluate,
    format_report,
    match,
    read_labels,
    read_predictions,
    read_prior,
    read_threshold,
)
from core.training.metrics import STUDY_AGGREGATIONS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.evaluate",
        description="Evaluate per-slice hemorrhage probabilities against reference labels, "
        "beside a constant-prior baseline (research use only).",
    )
    parser.add_argument("predictions", help="JSON written by 'python -m core.predict --json'")
    parser.add_argument("--labels", required=True, help="label CSV (challenge or wide format)")
    parser.add_argument(
        "--labels-format",
        choices=["auto", "challenge", "wide"],
        default="auto",
        help="challenge: ID_<sop>_<subtype>,Label; wide: one row per slice (default: header)",
    )
    parser.add_argument(
        "--threshold",
        metavar="FILE_OR_FLOAT",
        help="operating threshold for 'any' (a number, or a file: a number, "
        '{"threshold": x} or an earlier --json); default: Youden\'s J on these data',
    )
    parser.add_argument(
        "--prior-from",
        metavar="CSV_OR_JSON",
        help="baseline prior: label CSV (its prevalence) or JSON; default: these labels",
    )
    parser.add_argument("--json", metavar="OUT", help="write all figures as JSON ('-': stdout)")
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for the 95%% intervals (0: none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--study-score",
        choices=STUDY_AGGREGATIONS,
        default="max",
        help="how slice scores make a study score (default: max)",
    )
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="evaluate the slices present in both files when they differ",
    )
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        parser.error("--bootstrap must be 0 or more")

    try:
        threshold, threshold_source = (
            read_threshold(args.threshold) if args.threshold is not None else (None, None)
        )
        prior, prior_source = (
            read_prior(args.prior_from) if args.prior_from is not None else (None, None)
        )
        labels = read_labels(args.labels, args.labels_format)
        predictions = read_predictions(args.predictions)
        matched = match(predictions, labels, args.allow_partial)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT

    result = evaluate(
        matched.y,
        matched.p,
        matched.study_ids,
        prior=prior,
        threshold=threshold,
        n_boot=args.bootstrap,
        seed=args.seed,
        threshold_source=threshold_source,
        prior_source=prior_source,
        study_how=args.study_score,
    )
    result["warnings"] = matched.warnings + result["warnings"]
    result = {
        "predictions": Path(args.predictions).name,
        "labels_file": Path(args.labels).name,
        "labels_format": labels.format,
        "coverage": matched.coverage,
        **result,
    }
    document = json.dumps(result, indent=2, ensure_ascii=False)
    if args.json == "-":
        print(document)
        return EXIT_OK
    print(format_report(result))
    if args.json is not None:
        try:
            Path(args.json).write_text(document + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"error: cannot write {args.json}: {exc.strerror}", file=sys.stderr)
            return EXIT_OUTPUT
        print(f"\nAll figures written to {args.json}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
