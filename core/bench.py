"""Benchmarks that print numbers: ``python -m core.bench load|infer [--data DIR] [...]``.

Each figure comes with a baseline measured in the same run on the same files, and their ratio,
so a number means something on any machine.

load: every zip under the data folder, unzip + parse + decode + HU + window (a display image in
the brain window and the 3-window model input), through core.dicom.study.load_studies and
core.imaging.windowing, against a plain loop: pydicom.dcmread of each file in turn + numpy per
slice.

infer: the inference engine as the app uses it (core.inference.predictor.Predictor on a loaded
Study: batched, all cores, input at the model's size), once per backend in the same run: torch
fp32 (the reference) and every OpenVINO precision this CPU offers (bf16 only where it has bf16
units; int8 where its quantized IR is in the data folder, built first by core.quantize's
``build_int8`` when it is not and ``--data`` holds rsna_png, with its accuracy figures on the
validation split), then the choice the app makes (``auto``: the speed probe's precision and
batch size); for each, the engine over the N smallest studies, one 36-slice study end to end (zip
bytes → every probability and the bleed map) and the largest difference from torch fp32. All
against a seed-style loop measured in the same run on the same weights: files read one by one,
HU and three windows in numpy at the full 512×512, fp32, batch 1, NCHW, one forward per slice
under no_grad. The CPU's model, the flags that decide its precisions and the load average are
printed first: the figures only mean something beside them. By default the installed model
runs (``--weights untrained`` for a random network of ``--arch``/``--size``).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from PIL import Image

from core.dicom.study import load_studies
from core.imaging.windowing import BRAIN, MODEL_WINDOWS, apply_window, model_input
from core.inference.openvino_backend import (
    available_precisions,
    find_int8_ir,
    nncf_version,
    read_int8_record,
)
from core.inference.predictor import (
    Predictor,
    ResultCache,
    cpu_flags,
    cpu_has_bf16,
    usable_cpus,
)
from core.model.checkpoint import (
    BUILDERS,
    ModelSpec,
    build_model,
    find_default_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from core.shared_data import shared_data_root

DEFAULT_DATA = shared_data_root()
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
    spec = ModelSpec(arch, size, bleed_map=True)
    model = build_model(spec)
    card = {"training_data": "none: untrained weights written by core.bench, timing only"}
    return save_checkpoint(model, spec, directory, "bench-untrained", card)


#: CPU flags that decide which precisions are fast.
FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")


def cpu_model() -> str:
    """The CPU's model name as Linux reports it ('unknown' elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown"


def _load_average() -> str:
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


@dataclass(frozen=True)
class BackendRun:
    """One backend's figures: start-up, the engine over the studies, one study end to end."""

    name: str
    start_s: float  # Predictor construction (conversion or cached IR, compile, load check)
    load_s: float
    predict_s: float
    forward_s: float
    n: int
    study_s: float  # zip bytes -> probabilities and bleed map of the 36-slice study
    study_slices: int
    probs: np.ndarray  # every slice of every study, in order (for the agreement figures)
    maps: np.ndarray | None

    @property
    def engine_ms(self) -> float:
        return 1000 * self.predict_s / self.n

    @property
    def e2e_ms(self) -> float:
        return 1000 * (self.load_s + self.predict_s) / self.n

    @property
    def forward_ms(self) -> float:
        return 1000 * self.forward_s / self.n


def _run_backend(
    loaded_card: Path,
    zips: list[Path],
    study_bytes: bytes,
    args: argparse.Namespace,
    backend: str,
    precision: str | None,
) -> tuple[Predictor, BackendRun]:
    t = time.perf_counter()
    predictor = Predictor(
        # Timing only: the untrained throwaway checkpoint is unverified by design.
        load_checkpoint(loaded_card, allow_unverified=True),
        device=args.device,
        batch_size=args.batch_size,
        cache=ResultCache(),
        backend=backend,
        precision=precision,
    )
    start_s = time.perf_counter() - t
    if backend == "openvino" and predictor.engine is None:
        raise SystemExit(f"OpenVINO {precision} did not load (see the log line above)")
    predictor.warm_up()
    best: tuple[float, float, float, int, list[np.ndarray], list[np.ndarray]] | None = None
    for _ in range(args.repeat):
        predictor.cache.clear()
        load_s = predict_s = forward_s = 0.0
        n = 0
        probs: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        for path in zips:
            t = time.perf_counter()
            studies = load_studies(path)
            load_s += time.perf_counter() - t
            for study in studies:
                prediction = predictor.predict(study)
                timing = predictor.last_timing
                assert timing is not None and not timing.cached
                predict_s += timing.total_s
                forward_s += timing.forward_s
                n += timing.n_slices
                probs.append(np.asarray(prediction.probs))
                if prediction.bleed_map is not None:
                    maps.append(np.asarray(prediction.bleed_map, dtype=np.float32))
        if best is None or load_s + predict_s < best[0] + best[1]:
            best = (load_s, predict_s, forward_s, n, probs, maps)
    assert best is not None
    study_s = float("inf")
    study_slices = 0
    for _ in range(args.repeat):
        predictor.cache.clear()
        t = time.perf_counter()
        (study,) = load_studies(study_bytes)
        prediction = predictor.predict(study)
        study_s = min(study_s, time.perf_counter() - t)
        study_slices = len(prediction.slices)
        assert prediction.bleed_map is not None or not predictor.has_bleed_map
    load_s, predict_s, forward_s, n, probs, maps = best
    run = BackendRun(
        predictor.backend_name,
        start_s,
        load_s,
        predict_s,
        forward_s,
        n,
        study_s,
        study_slices,
        np.concatenate(probs),
        np.concatenate(maps) if maps else None,
    )
    return predictor, run


def _study_of(zips: list[Path], slices: int) -> Path:
    """The first study zip with ``slices`` slices (else the one closest to it)."""

    def count(p: Path) -> int:
        with zipfile.ZipFile(p) as zf:
            return sum(1 for i in zf.infolist() if not i.is_dir())

    return min(zips, key=lambda p: (abs(count(p) - slices), p.name))


def bench_infer(args: argparse.Namespace) -> None:
    all_zips = _zips(args.data)
    zips = sorted(all_zips, key=lambda p: p.stat().st_size)[: args.studies]
    study_zip = _study_of(all_zips, args.study_slices)
    precisions = available_precisions() if "openvino" in args.backends else ()
    with tempfile.TemporaryDirectory(prefix="ich-bench-") as tmp:
        if args.weights == "untrained":
            card = _untrained_checkpoint(args.arch, args.size, tmp)
            what = (
                f"untrained {args.arch} at {args.size} px with the bleed-map head: a randomly "
                "initialised network saved to a temporary checkpoint (timing; agreement on "
                "random weights)"
            )
        else:
            card = Path(args.weights) if args.weights else find_default_checkpoint()  # type: ignore[assignment]
            if card is None:
                raise SystemExit("no installed model: pass --weights CARD.json or untrained")
            what = f"the model {card.stem}"
        flags = cpu_flags()
        print(f"infer benchmark: {what}")
        print(f"  CPU: {cpu_model()}; {usable_cpus()} usable CPUs")
        print(
            "  flags that matter: "
            + " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in FLAGS_THAT_MATTER)
        )
        print(
            f"  load average (1, 5, 15 min) at start: {_load_average()} (a shared machine: other "
            "work on these CPUs slows every figure below)"
        )
        print(
            f"  studies: the {len(zips)} smallest zips under {args.data} "
            f"({', '.join(p.stem for p in zips)}); the end-to-end study: {study_zip.stem}; "
            f"batch {args.batch_size}; best of {args.repeat}"
        )
        study_bytes = study_zip.read_bytes()
        configs: list[tuple[str, str | None]] = []
        if "torch" in args.backends:
            configs.append(("torch", None))
        int8_record = _int8(card, args) if precisions and args.weights != "untrained" else None
        if int8_record is not None and int8_record.get("passed"):
            configs.append(("openvino", "int8"))
        configs += [("openvino", p) for p in precisions]
        runs: list[BackendRun] = []
        torch_predictor: Predictor | None = None
        for backend, precision in configs:
            predictor, run = _run_backend(card, zips, study_bytes, args, backend, precision)
            runs.append(run)
            if backend == "torch":
                torch_predictor = predictor
            else:
                del predictor
        refused_int8: tuple[float, np.ndarray] | None = None
        if int8_record is not None and not int8_record.get("passed") and int8_record["folder"]:
            refused_int8 = _time_refused_int8(card, zips, int8_record["folder"], args)
        baseline_model = load_checkpoint(card, allow_unverified=True).model  # NCHW, fp32, CPU
    offered = [p for b, p in configs if b == "openvino" and p is not None]
    print(
        f"  torch threads: {torch.get_num_threads()}; OpenVINO precisions offered here: "
        f"{', '.join(offered) or 'none'}"
    )
    if int8_record is not None:
        _print_int8(int8_record)
    if precisions:
        _print_auto(card)

    # Baseline: warmed up with one untimed slice, like the engines.
    infer_baseline(zips, baseline_model, 1)
    base_n, base_s = min(
        (infer_baseline(zips, baseline_model, args.baseline_slices) for _ in range(args.repeat)),
        key=lambda r: r[1] / r[0],
    )
    base_ms = 1000 * base_s / base_n
    del baseline_model

    def line(label: str, value: str, target: str = "", ok: bool = True) -> None:
        verdict = f"   (target {target}: {'met' if ok else 'MISSED'})" if target else ""
        print(f"  {label + ':':<64} {value}{verdict}")

    reference = runs[0] if configs and configs[0][0] == "torch" else None
    fold = 25 if cpu_has_bf16() else 8
    print(f"  slices scored by each engine: {runs[0].n if runs else 0}")
    for run in runs:
        print(f"  [{run.name}]")
        line("start (load, convert or cached IR, compile, load check)", f"{run.start_s:8.2f} s")
        line(
            "engine, model side (Study in memory -> probabilities)",
            f"{run.engine_ms:8.1f} ms/slice",
        )
        line("engine, end to end (load_studies + predict)", f"{run.e2e_ms:8.1f} ms/slice")
        line("model forward only, inside the engine", f"{run.forward_ms:8.1f} ms/slice")
        line(
            f"one {run.study_slices}-slice study: zip bytes -> probabilities + bleed map",
            f"{1000 * run.study_s:8.0f} ms",
        )
        line(
            "ratio baseline / engine, end to end",
            f"{base_ms / run.e2e_ms:8.2f}x",
            f">= {fold}x ({'bf16 units' if fold == 25 else 'no bf16 units'})",
            base_ms / run.e2e_ms >= fold,
        )
        if reference is not None and run is not reference:
            dp = float(np.abs(run.probs - reference.probs).max())
            line("max |dp| vs torch fp32, every slice and label", f"{dp:8.4f}")
            if run.maps is not None and reference.maps is not None:
                dm = float(np.abs(run.maps - reference.maps).max())
                line("max |d bleed-map p| vs torch fp32, every cell", f"{dm:8.4f}")
    if refused_int8 is not None:
        print("  [OpenVINO int8, refused by the accuracy guard: timed for information only]")
        line("model forward only, batch as above", f"{refused_int8[0]:8.1f} ms/slice")
        if reference is not None:
            dp = float(np.abs(refused_int8[1] - reference.probs).max())
            line("max |dp| vs torch fp32, every slice and label", f"{dp:8.4f}")
    base_name = f"baseline (dcmread per file, 512x512, fp32, batch 1, NCHW), {base_n} slices"
    line(base_name, f"{base_ms:8.1f} ms/slice")
    print(
        "    (the baseline runs after the engines' process setup, threads and allocator, so "
        "the ratio is not flattered by that setup)"
    )
    if torch_predictor is not None:
        _bench_gradcam(torch_predictor, zips[0], args, line)


def _int8(card: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """The int8 IR's record: the cached one, else one built now when ``--data`` holds the
    rsna_png slices (kept only when it passes the guard); None when neither."""
    from core.inference.openvino_backend import load_ir

    loaded = load_checkpoint(card, allow_unverified=True)
    load_ir(loaded, loaded.model)  # the f32 IR the int8 one lives beside
    folder = find_int8_ir(loaded, refused=True)
    if folder is not None:
        return {**read_int8_record(folder), "source": f"cached in {folder}", "folder": folder}
    if nncf_version() is None or not (args.data / "rsna_png" / "images").is_dir():
        print("  int8: no int8 IR cached and no rsna_png under --data to build it from")
        return None
    from core.training.int8_check import build_int8

    print("  int8: no int8 IR cached; building it (python -m core.quantize does the same)")
    # A refused one is kept too, marked so (the engine never offers it): the next run times
    # it without quantizing again.
    build = build_int8(loaded, args.data, keep_refused=True)
    return {**build.record, "source": f"built now, kept in {build.folder}", "folder": build.folder}


def _time_refused_int8(
    card: Path, zips: list[Path], folder: Path, args: argparse.Namespace
) -> tuple[float, np.ndarray]:
    """(ms per slice of the forward pass, calibrated probabilities of every slice in order)
    of an int8 IR the guard refused, for information: the engine never runs it, so it is
    timed here on its own, at the bench's batch size, on the same studies' model inputs."""
    import openvino as ov

    from core.inference.openvino_backend import compile_engine
    from core.model.bleed_map import has_bleed_map

    loaded = load_checkpoint(card, allow_unverified=True)
    spec = loaded.spec
    engine = compile_engine(
        ov.Core().read_model(folder / "model.xml"), "int8", has_bleed_map(loaded.model)
    )
    batches = []
    for path in zips:
        for study in load_studies(path):
            hu = study.default_series.hu
            for lo in range(0, len(hu), args.batch_size):
                x = model_input(hu[lo : lo + args.batch_size], spec.input_size, spec.windows)
                batches.append(x.numpy())
    engine.infer(batches[0])  # warm-up, as the engines get
    best = float("inf")
    logits: list[np.ndarray] = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        logits = [engine.infer(x)[0] for x in batches]
        best = min(best, time.perf_counter() - t)
    n = sum(len(x) for x in batches)
    temperature = np.asarray(loaded.temperature, dtype=np.float64)
    probs = 1.0 / (1.0 + np.exp(-np.concatenate(logits).astype(np.float64) / temperature))
    return 1000 * best / n, probs


def _print_int8(record: dict[str, Any]) -> None:
    """The int8 IR's accuracy figures on the validation split, from its record."""
    v = record.get("validation") or {}
    print(f"  int8 IR: {record.get('source', '')}; NNCF {record.get('nncf')}")
    if not v:
        return
    auc = " ".join(
        f"{label} {v['auc_torch_fp32'][label]:.4f}->{v['auc_int8'][label]:.4f}"
        for label in v["auc_int8"]
        if v["auc_int8"][label] is not None and v["auc_torch_fp32"][label] is not None
    )
    print(
        f"    accuracy on the validation split ({v['slices']} slices), torch fp32 -> int8: "
        f"AUC {auc}; max |dp| {v['max_dp']:.4f}, bleed map {v['max_dmap']:.4f}"
    )
    verdict = (
        "passed"
        if record.get("passed")
        else "REFUSED: " + "; ".join(record.get("refused_because") or [])
    )
    guard = record["guard"]
    map_bound = guard.get("map_tolerance", guard["tolerance"])
    bounds = f"|dp| <= {guard['tolerance']}, map cells <= {map_bound}"
    print(f"    guard ({bounds}): {verdict}")


def _print_auto(card: Path) -> None:
    """What the app itself picks on this machine (backend auto, no batch size given)."""
    p = Predictor(load_checkpoint(card, allow_unverified=True), cache=ResultCache(), backend="auto")
    probe = p.engine.probe.summary() if p.engine and p.engine.probe else "no speed probe"
    print(f"  the app's choice here (auto): {p.backend_name}, batch {p.batch_size}; {probe}")


def _bench_gradcam(
    predictor: Predictor, path: Path, args: argparse.Namespace, line: Callable[..., None]
) -> None:
    """Grad-CAM (torch, always) on a few slices vs one batch-1 torch forward."""
    series = load_studies(path)[0].default_series
    size = predictor.spec.input_size
    picks = np.linspace(0, series.n_slices - 1, args.cam_slices).round().astype(int).tolist()
    predictor.explain(series, picks[0], "any")  # warm-up
    cam_times = []
    fwd_times = []
    for i in picks:
        t = time.perf_counter()
        predictor.explain(series, i, "any")
        cam_times.append(time.perf_counter() - t)
        x = model_input(series.hu[i : i + 1], size, predictor.spec.windows)
        t = time.perf_counter()
        predictor.forward(x.contiguous(memory_format=torch.channels_last))
        fwd_times.append(time.perf_counter() - t)
    cam_ms = 1000 * statistics.median(cam_times)
    fwd1_ms = 1000 * statistics.median(fwd_times)
    line(f"Grad-CAM of 'any' (torch), median of {len(picks)} slices", f"{cam_ms:8.1f} ms/slice")
    line(f"one batch-1 torch forward at {size} px, median of {len(picks)}", f"{fwd1_ms:8.1f} ms")
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
    infer.add_argument(
        "--weights",
        help="model card (.json), or 'untrained' (--arch, --size); default: the installed model",
    )
    infer.add_argument(
        "--size", type=int, default=160, help="input size (px) of an untrained model"
    )
    infer.add_argument("--studies", type=int, default=2, help="the N smallest study zips")
    infer.add_argument(
        "--study-slices", type=int, default=36, help="slices of the end-to-end study"
    )
    infer.add_argument(
        "--backends",
        nargs="+",
        choices=["torch", "openvino"],
        default=["torch", "openvino"],
        help="torch fp32 and/or every OpenVINO precision this CPU offers",
    )
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
