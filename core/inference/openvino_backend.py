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
* Precision from the CPU, detected, never assumed: bf16 where the CPU has bf16 units
  (``cpu_has_bf16`` and OpenVINO's own ``OPTIMIZATION_CAPABILITIES`` both say so), f32
  elsewhere (bf16 without the units is emulated and far slower).
* Threads, streams and the number of parallel requests come from OpenVINO's THROUGHPUT
  performance hint (it sizes them for the cores it may use); each batch is split across that
  many requests run at once.
* The load check: before an engine is used, a fixed probe batch (a synthetic head phantom,
  ``probe_batch``) goes through it and through the torch model in fp32; a precision whose
  calibrated probabilities or bleed map differ by more than ``CHECK_TOLERANCE`` is refused and
  the next one tried (bf16 → f32); when none passes, or anything fails to convert or compile,
  the caller scores with torch and says so in one log line.
* Grad-CAM needs gradients, so it stays in torch (core.model.gradcam on the same module).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
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

#: OpenVINO precisions in the order tried: the fastest first.
PRECISIONS = ("bf16", "f32")

#: Largest |Δp| allowed between a precision and torch fp32, for every label's calibrated
#: probability and every cell of the bleed map: on the load check's probe batch, and in the
#: accuracy guard on real slices (tests/inference/test_openvino_backend.py). bf16 keeps 8 bits
#: of mantissa: measured on the shipped model over 136 real slices (AMD EPYC, AVX-512-BF16),
#: 0.005 on the probabilities and 0.012 on the bleed map.
CHECK_TOLERANCE = 0.02

#: Slices in the load check's probe batch.
PROBE_SLICES = 4

#: Output names given to the IR, so that they are found by name, not by position.
LOGITS = "logits"
MAP_LOGITS = "bleed_map_logits"


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


def available_precisions() -> tuple[str, ...]:
    """The OpenVINO precisions this machine offers, fastest first: bf16 only where the CPU
    has bf16 units (both /proc/cpuinfo's flags and OpenVINO's capabilities say so), f32
    always; () when OpenVINO is not installed."""
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
    together never read a half-written file."""
    import openvino as ov

    folder = ir_folder(loaded, root)
    xml = folder / "model.xml"
    if xml.is_file() and (folder / "model.bin").is_file():
        try:
            return ov.Core().read_model(xml), True
        except RuntimeError as exc:  # damaged cache: convert again
            log.warning("the cached OpenVINO model is unreadable (%s); converting again", exc)
            shutil.rmtree(folder, ignore_errors=True)
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
    return ir, False


# --------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class CheckResult:
    """The load check of one precision: largest |Δp| against torch fp32 on the probe batch."""

    precision: str
    max_dp: float
    max_dmap: float  # 0.0 for a model without the bleed-map head
    tolerance: float = CHECK_TOLERANCE

    @property
    def passed(self) -> bool:
        return self.max_dp <= self.tolerance and self.max_dmap <= self.tolerance


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
    """The IR compiled for this CPU at ``precision`` under OpenVINO's THROUGHPUT hint."""
    import openvino as ov

    compiled = ov.Core().compile_model(
        ir,
        "CPU",
        {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "THROUGHPUT"},
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


def check_engine(
    engine: OpenVinoEngine,
    model: nn.Module,
    temperature: tuple[float, ...],
    x: torch.Tensor,
    tolerance: float = CHECK_TOLERANCE,
) -> CheckResult:
    """``engine`` against the torch module in fp32 on the batch ``x``: the largest |Δp| of the
    calibrated probabilities and of the bleed map's probabilities."""
    wrapper = _WithMap(model).eval()
    with torch.inference_mode():
        ref = wrapper(x)
    ref_logits, ref_map = ref if wrapper.with_map else (ref, None)
    logits, maps = engine.infer(x.numpy())
    dp = np.abs(
        _calibrated(logits, temperature) - _calibrated(ref_logits.float().numpy(), temperature)
    )
    dmap = 0.0
    if ref_map is not None and maps is not None:
        dmap = float(np.abs(_sigmoid(maps) - _sigmoid(ref_map.float().numpy())).max())
    return CheckResult(engine.precision, float(dp.max()), dmap, tolerance)


def open_engine(
    loaded: LoadedModel,
    model: nn.Module,
    precision: str | None = None,
    tolerance: float = CHECK_TOLERANCE,
) -> OpenVinoEngine:
    """The fastest precision this CPU offers (or ``precision``) that passes the load check.

    Raises RuntimeError, saying why, when OpenVINO is absent, the conversion or compilation
    fails, or no precision passes: the caller then scores with torch.
    """
    offered = available_precisions()
    if not offered:
        raise RuntimeError("the openvino package is not installed")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown OpenVINO precision {precision!r}; use one of {PRECISIONS}")
    if precision is not None and precision not in offered:
        raise RuntimeError(f"this CPU does not offer {precision} (it offers {', '.join(offered)})")
    candidates = (precision,) if precision else offered
    ir, _cached = load_ir(loaded, model)
    x = probe_batch(loaded.spec)
    refused = []
    for p in candidates:
        engine = compile_engine(ir, p, has_bleed_map(model))
        result = check_engine(engine, model, loaded.temperature, x, tolerance)
        if result.passed:
            engine.check = result
            return engine
        log.warning(
            "OpenVINO %s refused: it differs from torch fp32 by %.3g (probabilities) / %.3g "
            "(bleed map) on the load check, more than %.3g",
            p,
            result.max_dp,
            result.max_dmap,
            tolerance,
        )
        refused.append(f"{p} (|Δp| {max(result.max_dp, result.max_dmap):.3g})")
    raise RuntimeError(f"no OpenVINO precision passed the load check: {', '.join(refused)}")


__all__ = [
    "AUTO",
    "BACKENDS",
    "BACKEND_ENV",
    "CHECK_TOLERANCE",
    "OPENVINO",
    "PRECISIONS",
    "TORCH",
    "CheckResult",
    "OpenVinoEngine",
    "available_precisions",
    "check_engine",
    "compile_engine",
    "convert",
    "ir_folder",
    "load_ir",
    "open_engine",
    "openvino_version",
    "probe_batch",
    "requested_backend",
]
