"""``python -m core.train``: train the slice classifier on labelled head-CT slices.

The door: it parses the arguments and hands them to core.training.trainer (what the run does,
its outputs and its resume point are described there). One process on a CPU or a GPU, or
``torchrun --nproc-per-node N -m core.train`` for DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from core.errors import ICHError
from core.model.checkpoint import BUILDERS, DEFAULT_WEIGHTS_DIR
from core.training.trainer import DEFAULT_FOLDS, run

# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m core.train",
        description=(
            "Train the hemorrhage slice classifier (research use only). Runs on one CPU/GPU, "
            "or under torchrun --nproc-per-node N with DistributedDataParallel."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--zips", nargs="+", metavar="ZIP_OR_DIR", help="study zips, or folders")
    src.add_argument("--dicom-dir", type=Path, help="challenge layout: folder of ID_<sop>.dcm")
    src.add_argument(
        "--png-dir",
        type=Path,
        help="folder of ID_<sop>.png brain-window slices (HU = value × 80 / 255)",
    )
    p.add_argument("--labels", type=Path, required=True, help="stage_2_train.csv (or wide CSV)")
    p.add_argument(
        "--dicom-index",
        type=Path,
        help="header index cache for --dicom-dir (default OUT/dicom_index.csv); reuse it "
        "across folds",
    )
    p.add_argument("--arch", default="resnext101_32x4d", choices=sorted(BUILDERS))
    p.add_argument("--size", type=int, default=160, help="input size in pixels")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16, help="slices per step per process")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.03, help="warmup share of all steps")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--folds", type=int, help=f"k-fold by patient (default {DEFAULT_FOLDS})")
    split.add_argument("--val-fraction", type=float, help="fixed split: share of patients")
    split.add_argument("--no-val", action="store_true", help="train on everything")
    split.add_argument(
        "--val-hash",
        type=float,
        metavar="SHARE",
        help="fixed split by image id: validation when sha256(id) falls in the first SHARE",
    )
    p.add_argument(
        "--val-ids",
        type=Path,
        metavar="CSV",
        help="with --val-hash: image ids (column image_id) always put in validation",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="validate and save an exponential moving average of the weights (e.g. 0.998)",
    )
    p.add_argument("--fold", type=int, default=0, help="validation fold with --folds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument(
        "--init", type=Path, help="ImageNet state dict to start from (.pth/.pt/.safetensors)"
    )
    p.add_argument(
        "--init-head",
        action="store_true",
        help="with --init: take its classifier head too (fine-tuning one of this project's "
        "models, whose head has the same six outputs)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: a GPU if present")
    p.add_argument(
        "--amp",
        choices=["auto", "fp16", "bf16", "off"],
        default="auto",
        help="auto: bf16 on GPUs that have it (else fp16); on CPUs with bf16 units, bf16 only "
        "where a one-second probe finds a training step faster in it (else fp32)",
    )
    p.add_argument("--workers", type=int, help="data loader processes (default: auto)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument(
        "--bleed-map",
        action="store_true",
        help="add the segmentation head (core.model.bleed_map): probabilities and a bleed map "
        "from one pass",
    )
    p.add_argument(
        "--synthetic",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of the training slices without bleed given a synthetic bleed each epoch "
        "(core.imaging.synthesis); they also teach the bleed map",
    )
    p.add_argument("--map-weight", type=float, default=1.0, help="weight of the bleed map's loss")
    p.add_argument("--no-embeddings", action="store_true", help="skip embeddings.npz")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--save-weights", metavar="NAME", help="write the final model card + weights")
    p.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS_DIR)
    p.add_argument(
        "--final",
        choices=["average", "weights"],
        default="average",
        help="with --ema: validate and save the moving average (default) or the weights "
        "themselves; may differ from the run it resumes",
    )
    p.add_argument(
        "--weights-dtype",
        choices=["float32", "float16"],
        default="float32",
        help="how --save-weights stores the tensors (float16: half the size, read as float32)",
    )
    p.add_argument("--digest-dir", type=Path, help=argparse.SUPPRESS)  # tests: per-rank sha256
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if (
        args.folds is None
        and args.val_fraction is None
        and args.val_hash is None
        and not (args.no_val)
    ):
        args.folds = DEFAULT_FOLDS
    if args.folds is not None and not 0 <= args.fold < args.folds:
        parser.error(f"--fold must be in 0..{args.folds - 1}")
    for name in ("epochs", "batch_size", "size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.val_ids is not None and args.val_hash is None:
        parser.error("--val-ids goes with --val-hash")
    if not 0 <= args.ema < 1:
        parser.error("--ema must be in [0, 1)")
    if not 0 <= args.synthetic <= 1:
        parser.error("--synthetic is a share in [0, 1]")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error("--max-steps must be positive")
    if args.save_weights and (args.weights_dir / f"{args.save_weights}.json").exists():
        parser.error(
            f"{args.weights_dir / args.save_weights}.json exists; choose another --save-weights "
            "name or remove that model first"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(message)s",
        stream=sys.stdout,
    )
    logging.getLogger("core.dicom.study").setLevel(logging.WARNING)  # not one line per study zip
    try:
        run(args)
    except (ValueError, ICHError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
