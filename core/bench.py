"""Benchmarks that print numbers: ``python -m core.bench load [--repeat N] [--data DIR]``.

Each figure comes with a baseline measured in the same run on the same files, and their ratio,
so a number means something on any machine.

load: every zip under the data folder, unzip + parse + decode + HU + window (a display image in
the brain window and the 3-window model input), through core.study.load_studies and
core.windowing, against a plain loop: pydicom.dcmread of each file in turn + numpy per slice.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from core.study import load_studies
from core.windowing import BRAIN, MODEL_WINDOWS, apply_window, model_input

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL_SIZE = 256


def _zips(data: Path) -> list[Path]:
    zips = sorted(data.rglob("*.zip"))
    if not zips:
        raise SystemExit(f"no study zips found under {data}")
    return zips


def load_engine(paths: list[Path]) -> int:
    """The app's path: one load_studies per zip, then vectorised windowing of each series."""
    n = 0
    for path in paths:
        for study in load_studies(path):
            for series in study.series:
                apply_window(series.hu, BRAIN.level, BRAIN.width)
                model_input(series.hu, MODEL_SIZE, MODEL_WINDOWS)
                n += series.n_slices
    return n


def load_baseline(paths: list[Path]) -> int:
    """A plain loop: read each file, dcmread, rescale, window, resize, one slice at a time."""
    n = 0
    for path in paths:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                ds = pydicom.dcmread(io.BytesIO(zf.read(info)))
                hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(
                    ds.RescaleIntercept
                )
                display = np.clip((hu - BRAIN.low) / BRAIN.width * 255, 0, 255).astype(np.uint8)
                del display
                channels = [
                    np.asarray(
                        Image.fromarray(
                            np.clip((hu - w.low) / w.width, 0, 1).astype(np.float32)
                        ).resize((MODEL_SIZE, MODEL_SIZE), Image.BILINEAR)
                    )
                    for w in MODEL_WINDOWS
                ]
                np.stack(channels)
                n += 1
    return n


def _best_of(fn: Callable[[list[Path]], int], paths: list[Path], repeat: int) -> tuple[int, float]:
    best = float("inf")
    count = 0
    for _ in range(repeat):
        start = time.perf_counter()
        count = fn(paths)
        best = min(best, time.perf_counter() - start)
    return count, best


def bench_load(data: Path, repeat: int) -> None:
    paths = _zips(data)
    n_engine, t_engine = _best_of(load_engine, paths, repeat)
    n_base, t_base = _best_of(load_baseline, paths, repeat)
    print(f"load benchmark: {len(paths)} zips under {data}, best of {repeat}")
    print(
        f"  engine   (load_studies + windowing): {n_engine} slices in {t_engine:.2f} s = "
        f"{n_engine / t_engine:.0f} slices/s"
    )
    print(
        f"  baseline (dcmread per file + numpy): {n_base} slices in {t_base:.2f} s = "
        f"{n_base / t_base:.0f} slices/s"
    )
    print(f"  ratio engine/baseline: {(n_engine / t_engine) / (n_base / t_base):.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.bench")
    parser.add_argument("what", choices=["load"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    if args.what == "load":
        bench_load(args.data, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
