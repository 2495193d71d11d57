"""Benchmarks that print numbers: ``python -m core.bench load|infer [--data DIR] [...]``.

Each figure comes with a baseline measured in the same run on the same files, and their ratio,
so a number means something on any machine.

load: every zip under the data folder, unzip + parse + decode + HU + window (a display image in
the brain window and the 3-window model input), through core.dicom.study.load_studies and
core.imaging.windowing, against a plain loop: pydicom.dcmread of each file in turn + numpy per
slice.

infer: the inference engine as the app uses it (core.inference.predictor.Predictor on a loaded
Study: batched, channels_last, inference_mode, all cores, input at the model's size) against a
seed-style loop measured in the same run on the same weights: files read one by one, HU and
three windows in numpy at the full 512×512, fp32, batch 1, NCHW, one forward per slice under
no_grad. No trained weights are needed: an untrained network is saved to a temporary
checkpoint and loaded through the normal path, so the numbers are timing only.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image

from core.dicom.study import load_studies
from core.imaging.windowing import BRAIN, MODEL_WINDOWS, apply_window, model_input
from core.inference.predictor import Predictor, ResultCache, usable_cpus
from core.model.checkpoint import BUILDERS, ModelSpec, build_model, load_checkpoint, save_checkpoint

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
                        ).resize((MODEL_SIZE, MODEL_SIZE), Image.Resampling.BILINEAR)
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


# --------------------------------------------------------------------------- infer


def infer_baseline(paths: list[Path], model: torch.nn.Module, limit: int) -> tuple[int, float]:
    """The seed's way, for ``limit`` slices: (slices, seconds). Files are read one by one."""
    n = 0
    start = time.perf_counter()
    for path in paths:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if n >= limit:
                    return n, time.perf_counter() - start
                ds = pydicom.dcmread(io.BytesIO(zf.read(info)))
                hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(
                    ds.RescaleIntercept
                )
                x = np.stack([np.clip((hu - w.low) / w.width, 0, 1) for w in MODEL_WINDOWS])
                with torch.no_grad():
                    torch.sigmoid(model(torch.from_numpy(x.astype(np.float32))[None]))
                n += 1
    return n, time.perf_counter() - start


def _untrained_checkpoint(arch: str, size: int, directory: str) -> Path:
    torch.manual_seed(0)
    spec = ModelSpec(arch, size)
    model = build_model(spec)
    card = {"training_data": "none: untrained weights written by core.bench, timing only"}
    return save_checkpoint(model, spec, directory, "bench-untrained", card)


def bench_infer(args: argparse.Namespace) -> None:
    zips = sorted(_zips(args.data), key=lambda p: p.stat().st_size)[: args.studies]
    with tempfile.TemporaryDirectory(prefix="ich-bench-") as tmp:
        card = _untrained_checkpoint(args.arch, args.size, tmp)
        predictor = Predictor(
            load_checkpoint(card),
            device=args.device,
            batch_size=args.batch_size,
            cache=ResultCache(),
        )
        baseline_model = load_checkpoint(card).model  # its own copy: NCHW, fp32, CPU
    print(
        f"infer benchmark: {len(zips)} smallest studies under {args.data}, "
        f"{args.arch} at {args.size} px, batch {args.batch_size}, {predictor.device}, "
        f"{torch.get_num_threads()} threads ({usable_cpus()} usable CPUs), best of {args.repeat}"
    )
    print(
        "  untrained weights, timing only: a randomly initialised network saved to a temporary "
        "checkpoint and loaded through core.model.checkpoint.load_checkpoint"
    )
    if hasattr(os, "getloadavg"):
        print(
            f"  load average at start: {os.getloadavg()[0]:.2f} "
            "(other work on these CPUs slows every figure below)"
        )
    predictor.warm_up()

    best: tuple[float, float, float, int] | None = None  # load, predict, forward, slices
    for _ in range(args.repeat):
        predictor.cache.clear()
        load_s = predict_s = forward_s = 0.0
        n = 0
        for path in zips:
            t = time.perf_counter()
            studies = load_studies(path)
            load_s += time.perf_counter() - t
            for study in studies:
                predictor.predict(study)
                timing = predictor.last_timing
                assert timing is not None and not timing.cached
                predict_s += timing.total_s
                forward_s += timing.forward_s
                n += timing.n_slices
        if best is None or load_s + predict_s < best[0] + best[1]:
            best = (load_s, predict_s, forward_s, n)
    assert best is not None
    load_s, predict_s, forward_s, n = best
    engine_ms = 1000 * predict_s / n
    e2e_ms = 1000 * (load_s + predict_s) / n
    forward_ms = 1000 * forward_s / n
    outside = 1 - forward_s / predict_s
    outside_e2e = 1 - forward_s / (load_s + predict_s)

    # Baseline: warmed up with one untimed slice, like the engine.
    infer_baseline(zips, baseline_model, 1)
    base_n, base_s = min(
        (infer_baseline(zips, baseline_model, args.baseline_slices) for _ in range(args.repeat)),
        key=lambda r: r[1] / r[0],
    )
    base_ms = 1000 * base_s / base_n
    del baseline_model

    # Grad-CAM on a few slices of the first study vs one batch-1 forward at the engine's size.
    series = load_studies(zips[0])[0].default_series
    picks = np.linspace(0, series.n_slices - 1, args.cam_slices).round().astype(int).tolist()
    predictor.explain(series, picks[0], "any")  # warm-up
    cam_times = []
    fwd_times = []
    for i in picks:
        t = time.perf_counter()
        predictor.explain(series, i, "any")
        cam_times.append(time.perf_counter() - t)
        x = model_input(series.hu[i : i + 1], args.size, predictor.spec.windows)
        t = time.perf_counter()
        predictor.forward(x.contiguous(memory_format=torch.channels_last))
        fwd_times.append(time.perf_counter() - t)
    cam_ms = 1000 * statistics.median(cam_times)
    fwd1_ms = 1000 * statistics.median(fwd_times)

    def line(label: str, value: str, target: str = "", ok: bool = True) -> None:
        verdict = f"   (target {target}: {'met' if ok else 'MISSED'})" if target else ""
        print(f"  {label + ':':<60} {value}{verdict}")

    base_name = f"baseline (dcmread per file, 512x512, fp32, batch 1, NCHW), {base_n} slices"
    print(f"  slices scored by the engine: {n} ({', '.join(p.stem for p in zips)})")
    line("engine, model side (Study in memory -> probabilities)", f"{engine_ms:8.1f} ms/slice")
    line("engine, end to end (load_studies + predict)", f"{e2e_ms:8.1f} ms/slice")
    line("model forward only, inside the engine", f"{forward_ms:8.1f} ms/slice")
    line(
        "share of time outside the forward, model side",
        f"{100 * outside:8.1f} %",
        "<= 20 %",
        outside <= 0.20,
    )
    line("share of time outside the forward, end to end", f"{100 * outside_e2e:8.1f} %")
    line(base_name, f"{base_ms:8.1f} ms/slice")
    print(
        "    (the baseline runs after the engine's process setup, threads and allocator, so "
        "the ratio is not flattered by that setup)"
    )
    line(
        "ratio baseline / engine, end to end",
        f"{base_ms / e2e_ms:8.2f}x",
        ">= 3x",
        base_ms / e2e_ms >= 3,
    )
    line("ratio baseline / engine, model side", f"{base_ms / engine_ms:8.2f}x")
    line(f"Grad-CAM of 'any', median of {len(picks)} slices", f"{cam_ms:8.1f} ms/slice")
    line(f"one batch-1 forward at {args.size} px, median of {len(picks)}", f"{fwd1_ms:8.1f} ms")
    line(
        "ratio Grad-CAM / batch-1 forward",
        f"{cam_ms / fwd1_ms:8.2f}x",
        "<= 1.5x",
        cam_ms / fwd1_ms <= 1.5,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.bench")
    parser.add_argument("what", choices=["load", "infer"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeat", type=int, default=2, help="best of N runs")
    infer = parser.add_argument_group("infer")
    infer.add_argument(
        "--arch", default="resnext101_32x4d", choices=[a for a in BUILDERS if a != "tiny"]
    )
    infer.add_argument("--size", type=int, default=MODEL_SIZE, help="model input size (px)")
    infer.add_argument("--studies", type=int, default=2, help="the N smallest study zips")
    infer.add_argument("--baseline-slices", type=int, default=16)
    infer.add_argument("--cam-slices", type=int, default=5)
    infer.add_argument("--batch-size", type=int, default=16)
    infer.add_argument("--device", choices=["cpu", "cuda"], default=None)
    args = parser.parse_args(argv)
    if args.what == "load":
        bench_load(args.data, args.repeat)
    else:
        bench_infer(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
