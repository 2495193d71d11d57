"""OpenVINO for the forward pass: the same network, compiled for this CPU, at the precision it
does best.

Why: the forward pass is the whole cost of scoring, and torch's eager CPU kernels leave the
matrix units (AVX-512-BF16, AMX) unused. OpenVINO compiles the network for the CPU it finds
(fusing BatchNorm into the convolutions, picking kernels per instruction set) and runs it in bf16
where the CPU has bf16 units; the issue's measurements put that at 4–6× torch fp32.

How it is shaped:

* Conversion (``ov.convert_model`` on the loaded torch module, classifier and bleed-map head
  together through ``_WithMap``) takes tens of seconds for ResNeXt-101, so its result, the IR,
  is kept in the app's data folder (``core.data_folder.data_dir()/openvino``), in a folder
  named by the weights' sha256, the input size and the OpenVINO version: a later start only
  reads it (a fraction of a second), and new weights or a new OpenVINO never reuse an old one.
  When a new folder is written, the folders this install will not read again are pruned
  (``prune_ir_cache``).
* int8: a quantized copy of the IR (NNCF post-training quantization, core.inference.int8),
  built by ``python -m core.quantize`` from real training slices and kept inside that folder
  (``int8-nncf<version>-cal<calibration digest>``); it is offered only where it exists, so the
  app needs no data at run time and scores with bf16/f32 until someone builds it.
* Precisions offered: int8 where its IR is cached, bf16 where the CPU has bf16 units
  (``cpu_has_bf16`` and OpenVINO's own ``OPTIMIZATION_CAPABILITIES`` both say so; bf16
  without the units is emulated and far slower), f32 always.
* The load check: before an engine is used, a fixed probe batch (a synthetic head phantom,
  ``probe_batch``) goes through it and through the torch model in fp32; a precision whose
  calibrated probabilities or bleed map differ by more than its tolerance (``CHECK_TOLERANCE``)
  is refused; when none passes, or anything fails to convert or compile, the caller scores
  with torch and says so in one log line.
* Speed decides, not an assumption: where several precisions pass, a timed probe of a few
  seconds (``speed_probe``) picks the fastest and, for it, the batch size (1, 4, 8 or 16);
  its figures are kept beside the IR (``speed-probe.json``, keyed by this machine), so it
  runs once per machine and model, and one log line gives the choice and the figures.
* Threads, streams and the number of parallel requests come from OpenVINO's THROUGHPUT
  performance hint (it sizes them for the cores it may use); each batch is split across that
  many requests run at once.
* Grad-CAM needs gradients, so it stays in torch (core.model.gradcam on the same module).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from core.errors import ModelError
from core.imaging.windowing import model_input
from core.model.bleed_map import has_bleed_map

if TYPE_CHECKING:
    from core.model.checkpoint import LoadedModel, ModelSpec

log = logging.getLogger(__name__)

TORCH = "torch"
OPENVINO = "openvino"
AUTO = "auto"
#: What ``--backend`` and ``ICH_BACKEND`` accept.
BACKENDS = (TORCH, OPENVINO, AUTO)
BACKEND_ENV = "ICH_BACKEND"

#: OpenVINO precisions, in the order tried when no speed probe has ranked them: int8 (only
#: where its quantized IR is cached), bf16 (only where the CPU has bf16 units), f32.
PRECISIONS = ("int8", "bf16", "f32")

#: Largest |Δp| allowed between a precision and torch fp32 for every label's calibrated
#: probability: on the load check's probe batch, and in the accuracy guard on real slices
#: (tests/inference/test_openvino_backend.py). bf16 keeps 8 bits of mantissa: measured on v3
#: over 136 real slices (AMD EPYC, AVX-512-BF16), 0.005; on v4's probe batch 0.001.
CHECK_TOLERANCE = 0.02
#: Largest |Δp| allowed for a cell of the bleed map. Looser than the probabilities' because
#: the map is only ever read through its threshold (the outline and the volume): a cell moves
#: the outline only where it lies within this much of the threshold, and the accuracy guard on
#: real slices checks the outline itself (the share of its cells that change side).
#: A map cell is one pixel's logit with no pooling to average rounding away, so bf16 moves it
#: more than a probability: 0.012 on v3 over 136 real slices, 0.020 on v4's probe batch
#: (2026-12-07, Zen 5 EPYC with AVX-512-BF16), where the probabilities moved by 0.001.
MAP_TOLERANCE = 0.05

#: Slices in the load check's probe batch.
PROBE_SLICES = 4

#: Output names given to the IR, so that they are found by name, not by position.
LOGITS = "logits"
MAP_LOGITS = "bleed_map_logits"

#: Batch sizes the speed probe tries for the fastest precision.
PROBE_BATCH_SIZES = (1, 4, 8, 16)
#: The batch size at which precisions are compared: the load check's probe batch, so each
#: engine is already warm at it.
COMPARE_BATCH = PROBE_SLICES
#: The speed probe stops trying further batch sizes once it has run this long (each
#: precision is still timed once at COMPARE_BATCH): a few seconds, once per machine and model.
PROBE_BUDGET_S = 6.0
#: The speed probe's figures, in the IR's folder.
PROBE_FILE = "speed-probe.json"
#: The int8 IR's own record (weights, versions, calibration set, accuracy figures).
INT8_RECORD = "int8.json"
#: Besides the current weights' IR folder, the IR folders of this many other weights (the most
#: recently used) survive a prune: switching between two models (a second card, the bench)
#: must not convert, and lose its int8 IR, on every switch.
KEEP_OTHER_WEIGHTS = 1


def requested_backend(backend: str | None = None) -> str:
    """The backend asked for: ``backend`` if given, else ``$ICH_BACKEND``, else 'auto'.
    ModelError (shown to the user, in the dashboard's model panel too) for anything else."""
    value = (backend or os.environ.get(BACKEND_ENV) or AUTO).strip().lower()
    if value not in BACKENDS:
        raise ModelError(
            f"unknown backend {value!r} (from {'--backend' if backend else BACKEND_ENV}); "
            f"use one of {', '.join(BACKENDS)}"
        )
    return value


def openvino_version() -> str | None:
    """The installed OpenVINO's version (e.g. '2026.4.1-22982-…'), or None when absent."""
    try:
        import openvino as ov
    except ImportError:
        return None
    return str(ov.get_version())


def nncf_version() -> str | None:
    """The installed NNCF's version (read from its metadata, without importing it: importing
    NNCF takes seconds), or None when absent."""
    try:
        return package_version("nncf")
    except PackageNotFoundError:
        return None


def available_precisions() -> tuple[str, ...]:
    """The OpenVINO precisions this CPU offers for the converted IR: bf16 only where the CPU
    has bf16 units (both /proc/cpuinfo's flags and OpenVINO's capabilities say so), f32
    always; () when OpenVINO is not installed. int8 is not a property of the CPU but of the
    cache (``find_int8_ir``): OpenVINO runs int8 on every x86 CPU it supports."""
    from core.inference.predictor import cpu_has_bf16

    try:
        import openvino as ov
    except ImportError:
        return ()
    capabilities = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    out = []
    if "BF16" in capabilities and cpu_has_bf16():
        out.append("bf16")
    out.append("f32")
    return tuple(out)


# --------------------------------------------------------------------------- conversion


class _WithMap(nn.Module):
    """The network as one traced function: logits, and the bleed-map logits when it has the
    head (one conversion, one compiled model, one pass for both)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.with_map = has_bleed_map(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.with_map:
            return self.model(x, with_map=True)
        return self.model(x)


def ir_folder(loaded: LoadedModel, root: Path | None = None) -> Path:
    """Where the IR of these weights, at this input size, for this OpenVINO is kept."""
    from core.data_folder import data_dir

    version = re.sub(r"[^A-Za-z0-9.]+", "-", (openvino_version() or "none").split("-")[0])
    name = f"{loaded.weights_sha256[:24]}-{loaded.spec.arch}-{loaded.spec.input_size}px-ov{version}"
    return (root or data_dir() / "openvino") / name


def convert(model: nn.Module, spec: ModelSpec) -> Any:
    """``ov.convert_model`` on the torch module: (n, 3, size, size) → logits [, map logits],
    with a dynamic batch dimension and named outputs."""
    import openvino as ov

    wrapper = _WithMap(model).eval()
    size = spec.input_size
    example = torch.zeros(2, 3, size, size)
    with torch.inference_mode(False), torch.no_grad():
        ir = ov.convert_model(wrapper, example_input=example, input=[(-1, 3, size, size)])
    names = [LOGITS, MAP_LOGITS] if wrapper.with_map else [LOGITS]
    if len(ir.outputs) != len(names):
        raise RuntimeError(f"the converted model has {len(ir.outputs)} outputs, not {len(names)}")
    for output, name in zip(ir.outputs, names, strict=True):
        output.get_tensor().set_names({name})
    return ir


def load_ir(loaded: LoadedModel, model: nn.Module, root: Path | None = None) -> tuple[Any, bool]:
    """(the IR of ``loaded``'s weights, whether it came from the disk cache). Converted once and
    written atomically (a temporary folder renamed into place), so two processes starting
    together never read a half-written file; a new folder prunes the ones this install will
    not read again (``prune_ir_cache``)."""
    import openvino as ov

    folder = ir_folder(loaded, root)
    xml = folder / "model.xml"
    if xml.is_file() and (folder / "model.bin").is_file():
        try:
            ir = ov.Core().read_model(xml)
        except RuntimeError as exc:  # damaged cache: convert again
            log.warning("the cached OpenVINO model is unreadable (%s); converting again", exc)
            shutil.rmtree(folder, ignore_errors=True)
        else:
            _mark_used(folder)
            return ir, True
    start = time.perf_counter()
    ir = convert(model, loaded.spec)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        # Weights kept in full precision: the f32 engine must compute what torch computes.
        ov.save_model(ir, tmp / "model.xml", compress_to_fp16=False)
        try:
            tmp.rename(folder)
        except OSError:  # another process got there first: its copy is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "converted the model for OpenVINO in %.1f s (kept for later starts)",
        time.perf_counter() - start,
    )
    prune_ir_cache(folder)
    return ir, False


def _mark_used(folder: Path) -> None:
    """The folder's time stamp says when it was last used (the prune keeps the recent ones)."""
    with contextlib.suppress(OSError):
        os.utime(folder)


def prune_ir_cache(current: Path) -> list[Path]:
    """Remove the IR folders beside ``current`` that this install will not read again: those
    of another OpenVINO version, and those of other weights beyond the ``KEEP_OTHER_WEIGHTS``
    most recently used; returns what was removed. A folder still being written (``.tmp-``) is
    left alone. Why: each ResNeXt-101 IR is ~170 MB (f32) plus ~45 MB (int8), and every new
    weights or OpenVINO version would otherwise add another."""
    ov_tag = current.name.rpartition("-ov")[2]
    try:
        others = [
            p
            for p in current.parent.iterdir()
            if p.is_dir() and p != current and not p.name.startswith(".tmp-")
        ]
    except OSError:
        return []
    stale = [p for p in others if p.name.rpartition("-ov")[2] != ov_tag]
    same_version = sorted(
        (p for p in others if p not in stale), key=lambda p: p.stat().st_mtime, reverse=True
    )
    removed = stale + same_version[KEEP_OTHER_WEIGHTS:]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    if removed:
        log.info("removed %d old OpenVINO model folder(s) from the cache", len(removed))
    return removed


def int8_folder_name(calibration_digest: str, nncf: str | None = None) -> str:
    """The int8 IR's folder inside the f32 IR's folder: named by the NNCF version that
    quantized it and the digest of its calibration set (with the f32 folder's weights digest,
    input size and OpenVINO version, that is its whole identity)."""
    version = re.sub(r"[^A-Za-z0-9.]+", "-", nncf or nncf_version() or "none")
    return f"int8-nncf{version}-cal{calibration_digest[:16]}"


def find_int8_ir(
    loaded: LoadedModel, root: Path | None = None, *, refused: bool = False
) -> Path | None:
    """The folder of the int8 IR of ``loaded``'s weights for this OpenVINO and NNCF, or None
    when none was built (``python -m core.quantize``); of several (other calibration sets),
    the most recent. One whose record says the accuracy guard refused it (kept by
    ``--keep-refused`` for measuring) is found only with ``refused``: the engine never is
    offered it."""
    version = nncf_version()
    base = ir_folder(loaded, root)
    if version is None or not base.is_dir():
        return None
    prefix = int8_folder_name("", version)
    found = [
        p
        for p in base.iterdir()
        if p.is_dir()
        and p.name.startswith(prefix)
        and all((p / n).is_file() for n in ("model.xml", "model.bin", INT8_RECORD))
        and (refused or read_int8_record(p).get("passed") is not False)
    ]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def read_int8_record(folder: Path) -> dict[str, Any]:
    """The int8 IR's record (weights, versions, calibration set, accuracy figures); {} when
    unreadable."""
    try:
        record = json.loads((folder / INT8_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


# --------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class CheckResult:
    """The load check of one precision: largest |Δp| against torch fp32 on the probe batch."""

    precision: str
    max_dp: float
    max_dmap: float  # 0.0 for a model without the bleed-map head
    tolerance: float = CHECK_TOLERANCE
    map_tolerance: float = MAP_TOLERANCE

    @property
    def passed(self) -> bool:
        return self.max_dp <= self.tolerance and self.max_dmap <= self.map_tolerance

    @property
    def key(self) -> str:
        """The tolerances it was judged by, as kept beside a refusal."""
        return tolerance_key(self.tolerance, self.map_tolerance)


def tolerance_key(tolerance: float, map_tolerance: float = MAP_TOLERANCE) -> str:
    """Tolerances as kept beside a refusal ("probabilities/map"): a refusal counts again only
    under the same ones."""
    return f"{tolerance:g}/{map_tolerance:g}"


@dataclass(frozen=True)
class ProbeFigures:
    """What the speed probe measured, ms per slice: each passing precision at
    ``COMPARE_BATCH``, and the chosen one at each batch size it reached in its time budget.
    ``cached``: read from ``PROBE_FILE``, not measured in this process."""

    by_precision: dict[str, float]
    by_batch: dict[int, float]
    cached: bool

    def summary(self) -> str:
        """One line's worth, e.g. 'int8 62.1 · f32 224.0 ms/slice at batch 4; int8 at batch
        1/4/8/16: 85.0/62.1/70.6/63.8 ms/slice (measured now)'."""
        ranked = sorted(self.by_precision.items(), key=lambda kv: kv[1])
        head = " · ".join(f"{p} {ms:.1f}" for p, ms in ranked)
        out = f"{head} ms/slice at batch {COMPARE_BATCH}"
        if self.by_batch and ranked:
            sizes = sorted(self.by_batch)
            out += (
                f"; {ranked[0][0]} at batch {'/'.join(map(str, sizes))}: "
                + "/".join(f"{self.by_batch[b]:.1f}" for b in sizes)
                + " ms/slice"
            )
        return out + (" (cached probe)" if self.cached else " (measured now)")


class OpenVinoEngine:
    """A compiled model at one precision: ``infer(x)`` → (logits, map logits or None), numpy
    float32. Not thread-safe on its own: the Predictor calls it under the model's lock."""

    def __init__(self, compiled: Any, precision: str, with_map: bool) -> None:
        import openvino as ov

        self.compiled = compiled
        self.precision = precision
        self.with_map = with_map
        self.n_requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
        self.streams = int(compiled.get_property("NUM_STREAMS"))
        self._queue = ov.AsyncInferQueue(compiled, self.n_requests)
        self.version = (openvino_version() or "").split("-")[0]
        #: Set by ``open_engine``: the load check this engine passed.
        self.check: CheckResult | None = None
        #: Set by ``open_engine``: the batch size the speed probe chose (None: not probed).
        self.batch_size: int | None = None
        #: Set by ``open_engine``: the speed probe's figures (None: not probed).
        self.probe: ProbeFigures | None = None
        #: For int8: the folder of the quantized IR it runs.
        self.ir_path: Path | None = None

    @property
    def name(self) -> str:
        """How the dashboard and the logs name it, e.g. 'OpenVINO 2026.4.1 bf16'."""
        return f"OpenVINO {self.version} {self.precision}"

    def infer(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (n, labels) and map logits (n, 1, h, w) of a model-ready batch; the batch is
        split into ``n_requests`` parts run at once (OpenVINO's streams)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = x.shape[0]
        parts = np.array_split(np.arange(n), min(n, self.n_requests))
        results: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

        def done(request: Any, index: int) -> None:
            logits = request.get_tensor(LOGITS).data.copy()
            maps = request.get_tensor(MAP_LOGITS).data.copy() if self.with_map else None
            results[index] = (logits, maps)

        self._queue.set_callback(done)
        for k, part in enumerate(parts):
            self._queue.start_async({0: x[part[0] : part[-1] + 1]}, k)
        self._queue.wait_all()
        ordered = [results[k] for k in range(len(parts))]
        logits = np.concatenate([r[0] for r in ordered])
        maps = (
            np.concatenate([r[1] for r in ordered if r[1] is not None]) if self.with_map else None
        )
        return logits, maps


def compile_engine(ir: Any, precision: str, with_map: bool) -> OpenVinoEngine:
    """The IR compiled for this CPU at ``precision`` under OpenVINO's THROUGHPUT hint. For int8
    (a quantized IR) the layers left unquantized run in f32, never bf16: int8 already spends
    the accuracy budget."""
    import openvino as ov

    hint = "f32" if precision == "int8" else precision
    compiled = ov.Core().compile_model(
        ir,
        "CPU",
        {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "THROUGHPUT"},
    )
    return OpenVinoEngine(compiled, precision, with_map)


def probe_batch(spec: ModelSpec, n: int = PROBE_SLICES) -> torch.Tensor:
    """A fixed, model-ready batch that looks like head CT to the network: an elliptic skull
    (bone) around brain tissue with CSF, a hyperdense blob (fresh blood) of a different size on
    each slice, and scanner-like noise; the same numbers on every machine (seeded)."""
    rng = np.random.default_rng(17)
    size = 256
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size - 0.5
    hu = np.empty((n, size, size), np.float32)
    for k in range(n):
        r = (xx / 0.38) ** 2 + (yy / 0.45) ** 2
        s = np.full((size, size), -1000.0, np.float32)
        s[r < 1.0] = 900.0  # skull
        s[r < 0.85] = 32.0  # brain
        s[((xx / 0.05) ** 2 + (yy / 0.15) ** 2) < 1] = 8.0  # ventricles (CSF)
        blob = ((xx - 0.15) ** 2 + (yy + 0.1 - 0.05 * k) ** 2) < (0.02 + 0.02 * k) ** 2
        s[blob & (r < 0.85)] = 65.0  # blood
        hu[k] = s + rng.normal(0, 4, (size, size)).astype(np.float32)
    return model_input(hu, spec.input_size, spec.windows)


def _calibrated(logits: np.ndarray, temperature: tuple[float, ...]) -> np.ndarray:
    t = np.asarray(temperature, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64) / t))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z.astype(np.float64)))


def torch_reference(model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """The torch module's fp32 logits and map logits on ``x`` (what every engine is held to)."""
    wrapper = _WithMap(model).eval()
    with torch.inference_mode():
        ref = wrapper(x)
    ref_logits, ref_map = ref if wrapper.with_map else (ref, None)
    return ref_logits.float().numpy(), None if ref_map is None else ref_map.float().numpy()


def compare(
    logits: np.ndarray,
    maps: np.ndarray | None,
    reference: tuple[np.ndarray, np.ndarray | None],
    temperature: tuple[float, ...],
) -> tuple[float, float]:
    """(largest |Δp| of the calibrated probabilities, largest |Δp| of the bleed map's cells)
    of an engine's outputs against torch's; 0.0 for the map where there is none."""
    ref_logits, ref_map = reference
    dp = np.abs(_calibrated(logits, temperature) - _calibrated(ref_logits, temperature))
    dmap = 0.0
    if ref_map is not None and maps is not None:
        dmap = float(np.abs(_sigmoid(maps) - _sigmoid(ref_map)).max())
    return float(dp.max()), dmap


def check_engine(
    engine: OpenVinoEngine,
    model: nn.Module,
    temperature: tuple[float, ...],
    x: torch.Tensor,
    tolerance: float = CHECK_TOLERANCE,
    reference: tuple[np.ndarray, np.ndarray | None] | None = None,
    map_tolerance: float = MAP_TOLERANCE,
) -> CheckResult:
    """``engine`` against the torch module in fp32 on the batch ``x`` (``reference``: torch's
    outputs on it, when already computed): the largest |Δp| of the calibrated probabilities
    and of the bleed map's probabilities."""
    if reference is None:
        reference = torch_reference(model, x)
    logits, maps = engine.infer(x.numpy())
    max_dp, max_dmap = compare(logits, maps, reference, temperature)
    return CheckResult(engine.precision, max_dp, max_dmap, tolerance, map_tolerance)


# --------------------------------------------------------------------------- speed probe


def machine_key() -> dict[str, Any]:
    """What the speed probe's figures depend on besides the model: the CPU, the cores this
    process may use, the flags that decide the precisions, and OpenVINO's version."""
    from core.inference.predictor import cpu_flags, usable_cpus

    try:
        import openvino as ov

        cpu = str(ov.Core().get_property("CPU", "FULL_DEVICE_NAME"))
    except Exception:  # noqa: BLE001 - the key only needs to differ between machines
        cpu = "unknown"
    flags = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"}
    return {
        "cpu": cpu,
        "usable_cpus": usable_cpus(),
        "flags": sorted(cpu_flags() & flags),
        "openvino": (openvino_version() or "").split("-")[0],
    }


def _probe_id(engine: OpenVinoEngine) -> str:
    """The probe's name for what it timed: the precision, and for int8 which quantized IR."""
    if engine.precision == "int8" and engine.ir_path is not None:
        return f"int8:{engine.ir_path.name}"
    return engine.precision


def read_probe(folder: Path) -> dict[str, Any]:
    """The speed probe's figures kept in ``folder`` for this machine; {} when there are none
    (or they were measured on another machine)."""
    try:
        data = json.loads((folder / PROBE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("machine") != machine_key():
        return {}
    return data


def _write_probe(folder: Path, data: dict[str, Any]) -> None:
    """Written to a temporary file and renamed: a reader never sees half of it."""
    try:
        tmp = folder / f".{PROBE_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, folder / PROBE_FILE)
    except OSError as exc:  # the probe runs again next start; nothing else depends on it
        log.info("could not keep the speed probe's figures (%s)", exc)


def _time_batch(engine: OpenVinoEngine, x: np.ndarray, runs: int, warm: bool) -> float:
    """Best ms per slice of ``runs`` timed passes over ``x`` (after one untimed pass unless
    ``warm``): the best, because on a shared machine the others measure the neighbours."""
    if not warm:
        engine.infer(x)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        engine.infer(x)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(x)


def fastest_batch(ms_per_slice: dict[int, float]) -> int:
    """The batch size with the fewest ms per slice; on a tie the larger (fewer passes)."""
    return min(ms_per_slice, key=lambda b: (ms_per_slice[b], -b))


def speed_probe(
    engines: dict[str, OpenVinoEngine],
    spec: ModelSpec,
    budget_s: float = PROBE_BUDGET_S,
    batch_sizes: tuple[int, ...] = PROBE_BATCH_SIZES,
) -> tuple[str, int, ProbeFigures]:
    """(fastest precision, its fastest batch size, the figures), timed on the probe phantom.

    Every engine is timed at ``COMPARE_BATCH`` (warm from the load check): best of two passes.
    Then the fastest one at the other batch sizes, smallest first, one warm-up and up to two
    timed passes each, while the time they are expected to take (from the ms/slice measured so
    far) still fits in ``budget_s`` (a size not tried is not chosen)."""
    start = time.perf_counter()
    x = probe_batch(spec, max(batch_sizes)).numpy()
    by_precision = {
        p: _time_batch(e, x[:COMPARE_BATCH], runs=2, warm=True) for p, e in engines.items()
    }
    fastest = min(by_precision, key=lambda p: by_precision[p])
    by_batch = {COMPARE_BATCH: by_precision[fastest]}
    for size in sorted(batch_sizes):
        if size in by_batch:
            continue
        left = budget_s - (time.perf_counter() - start)
        per_pass = min(by_batch.values()) * size / 1000  # seconds, expected
        runs = 2 if 3 * per_pass <= left else 1
        if (runs + 1) * per_pass > left:
            break
        by_batch[size] = _time_batch(engines[fastest], x[:size], runs=runs, warm=False)
    batch = fastest_batch(by_batch)
    return fastest, batch, ProbeFigures(by_precision, by_batch, cached=False)


# --------------------------------------------------------------------------- choice


def _candidates(loaded: LoadedModel, precision: str | None) -> tuple[list[str], Path | None]:
    """(the precisions to try, in PRECISIONS order; the int8 IR's folder or None)."""
    offered = available_precisions()
    if not offered:
        raise RuntimeError("the openvino package is not installed")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown OpenVINO precision {precision!r}; use one of {PRECISIONS}")
    int8 = find_int8_ir(loaded) if precision in (None, "int8") else None
    if precision == "int8" and int8 is None:
        raise RuntimeError(
            "no int8 model is built for these weights, this OpenVINO and this NNCF: build it "
            "with python -m core.quantize"
        )
    if precision not in (None, "int8") and precision not in offered:
        raise RuntimeError(f"this CPU does not offer {precision} (it offers {', '.join(offered)})")
    candidates = (["int8"] if int8 is not None else []) + list(offered)
    return [p for p in candidates if precision in (None, p)], int8


def open_engine(
    loaded: LoadedModel,
    model: nn.Module,
    precision: str | None = None,
    tolerance: float = CHECK_TOLERANCE,
    *,
    probe: bool = True,
) -> OpenVinoEngine:
    """The fastest precision on offer (or ``precision``) that passes the load check, with the
    batch size it is fastest at (``engine.batch_size``).

    Every candidate is compiled and checked; of those that pass, the speed probe's figures
    decide (measured once and kept beside the IR; ``probe=False`` skips it, taking the first
    in PRECISIONS order). Where figures (or, at this tolerance, a refusal) are already kept
    for every candidate, the candidates are tried fastest first, refused ones last, the first
    passing one used, and nothing is timed: a later start compiles and checks one engine.

    Raises RuntimeError, saying why, when OpenVINO is absent, the conversion or compilation
    fails, or no precision passes: the caller then scores with torch.
    """
    import openvino as ov

    candidates, int8 = _candidates(loaded, precision)
    ir, _cached = load_ir(loaded, model)
    folder = ir_folder(loaded)
    x = probe_batch(loaded.spec)
    reference = torch_reference(model, x)
    with_map = has_bleed_map(model)

    kept = read_probe(folder) if probe else {}
    kept_ms: dict[str, float] = kept.get("by_precision", {})
    # Refused at this tolerance on an earlier start: known too, tried last (the check is
    # deterministic, so a start does not compile and time it again and again).
    # (Kept as "probabilities/map" tolerances; an older record's single number never matches,
    # so what it refused is checked again.)
    judged_by = tolerance_key(tolerance)
    kept_refused = {k for k, t in kept.get("refused", {}).items() if t == judged_by}
    ids = {p: f"int8:{int8.name}" if p == "int8" and int8 is not None else p for p in candidates}
    all_kept = probe and all(ids[p] in kept_ms or ids[p] in kept_refused for p in candidates)
    if all_kept:
        candidates.sort(key=lambda p: kept_ms.get(ids[p], float("inf")))

    refused: list[str] = []
    refused_ids: list[str] = []
    passed: dict[str, OpenVinoEngine] = {}
    for p in candidates:
        source = ov.Core().read_model(int8 / "model.xml") if p == "int8" and int8 else ir
        engine = compile_engine(source, p, with_map)
        engine.ir_path = int8 if p == "int8" else None
        result = check_engine(engine, model, loaded.temperature, x, tolerance, reference)
        if not result.passed:
            log.warning(
                "OpenVINO %s refused: it differs from torch fp32 by %.3g (probabilities) / %.3g "
                "(bleed map) on the load check; allowed %.3g / %.3g",
                p,
                result.max_dp,
                result.max_dmap,
                result.tolerance,
                result.map_tolerance,
            )
            refused.append(f"{p} (|Δp| {max(result.max_dp, result.max_dmap):.3g})")
            refused_ids.append(ids[p])
            continue
        engine.check = result
        passed[p] = engine
        if all_kept or not probe:
            break  # the fastest that passes (kept figures), or the first (no probe)
    if not passed:
        raise RuntimeError(f"no OpenVINO precision passed the load check: {', '.join(refused)}")

    if not probe:
        return next(iter(passed.values()))
    if all_kept:
        ((p, engine),) = passed.items()
        by_batch = {int(b): ms for b, ms in kept.get("by_batch", {}).get(ids[p], {}).items()}
        if by_batch:
            engine.batch_size = fastest_batch(by_batch)
            shown = {q: kept_ms[ids[q]] for q in candidates if ids[q] in kept_ms}
            engine.probe = ProbeFigures(shown, by_batch, cached=True)
            return engine
        passed_now = {p: engine}
    else:
        passed_now = passed
    best, batch, figures = speed_probe(passed_now, loaded.spec)
    engine = passed_now[best]
    engine.batch_size, engine.probe = batch, figures
    record = read_probe(folder) or {"machine": machine_key()}
    record.setdefault("by_precision", {}).update(
        {_probe_id(e): figures.by_precision[q] for q, e in passed_now.items()}
    )
    record.setdefault("by_batch", {})[_probe_id(engine)] = {
        str(b): ms for b, ms in figures.by_batch.items()
    }
    known_refused = record.setdefault("refused", {})
    for key in (_probe_id(e) for e in passed_now.values()):
        known_refused.pop(key, None)
    known_refused.update({key: judged_by for key in refused_ids})
    _write_probe(folder, record)
    return engine


__all__ = [
    "AUTO",
    "BACKENDS",
    "BACKEND_ENV",
    "CHECK_TOLERANCE",
    "MAP_TOLERANCE",
    "INT8_RECORD",
    "OPENVINO",
    "PRECISIONS",
    "PROBE_BATCH_SIZES",
    "PROBE_FILE",
    "TORCH",
    "CheckResult",
    "OpenVinoEngine",
    "ProbeFigures",
    "available_precisions",
    "check_engine",
    "compare",
    "compile_engine",
    "convert",
    "fastest_batch",
    "find_int8_ir",
    "int8_folder_name",
    "ir_folder",
    "load_ir",
    "machine_key",
    "nncf_version",
    "open_engine",
    "openvino_version",
    "probe_batch",
    "prune_ir_cache",
    "read_int8_record",
    "read_probe",
    "requested_backend",
    "speed_probe",
    "torch_reference",
]
