"""``python -m core.crossval``: pool the folds, cross-validate the slice-context model and
finish the final checkpoint.

The door: it parses the arguments and hands them to core.training.crossval (what is pooled,
fitted and written is described there).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core.errors import ICHError
from core.model.context import ContextSpec
from core.training.crossval import EXIT_FAILED, EXIT_INPUT, EXIT_OK, format_report, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m core.crossval",
        description=(
            "Pool the folds' out-of-fold predictions, cross-validate the slice-context model, "
            "and store it with the cross-validated figures in the final checkpoint. "
            "Research use only."
        ),
    )
    p.add_argument("runs", nargs="+", type=Path, help="the folds' run folders (one per fold)")
    p.add_argument("--checkpoint", type=Path, required=True, help="final model's card (.json)")
    p.add_argument("--context-epochs", type=int, default=300)
    p.add_argument("--hidden", type=int, default=ContextSpec().hidden)
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fold-command",
        help="how the folds were trained (recorded verbatim in the card), e.g. the core.train "
        "command line with FOLD in place of the fold number",
    )
    p.add_argument("--dry-run", action="store_true", help="print the figures, change nothing")
    p.add_argument(
        "--allow-unverified",
        action="store_true",
        help="finish a model that is not on the manifest (core.model.integrity): a newly "
        "trained one always is not",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except ICHError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:
        print(f"error: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    print(format_report(report))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
