"""Inference engine: one Study (or Series) in, typed per-slice and study-level probabilities out.

Why it is shaped this way:

* The HU stack is already one contiguous array, so each batch's model input is built in one
  vectorised call (resize once, window per channel); that keeps the time outside the network's
  forward pass to a few percent, and the slices are scored in batches on every CPU core.
* Results are cached by the pixels' hash and the weights' identity: reopening a study, or the
  dashboard rerunning its script, costs nothing, and new weights never reuse old results.
* Grad-CAM puts hooks on the same model, so forward passes and heatmaps share one lock.

The dashboard keeps one Predictor per process (it wraps ``Predictor.from_default`` in its
resource cache): the model is loaded once.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.dicom.study import Series, Study
from core.errors import ModelError
from core.imaging.volume import (
    DENSE,
    MAP_METHOD,
    MAP_NOTICE,
    MAP_THRESHOLD,
    BleedEstimate,
    DensityRule,
    estimate_bleed,
    mask_from_bleed_map,
    measure,
)
from core.imaging.windowing import model_input
from core.inference.openvino_backend import (
    AUTO,
    OPENVINO,
    TORCH,
    OpenVinoEngine,
    open_engine,
    requested_backend,
)
from core.labels import LABELS
from core.model.bleed_map import has_bleed_map
from core.model.checkpoint import (
    LoadedModel,
    default_weights_dir,
    find_default_checkpoint,
    load_checkpoint,
)
from core.model.context import SliceContext, apply_context
from core.model.gradcam import GradCamExplainer, Heatmap
from core.model.integrity import UNVERIFIED_LABEL

log = logging.getLogger(__name__)

#: ``progress(done, total)``: slices scored so far out of the series' slice count.
ProgressCallback = Callable[[int, int], None]

#: Studies whose results the shared cache keeps (each entry is slices × 6 floats: tiny).
CACHE_ENTRIES = 64

DEFAULT_BATCH_SIZE = 16


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SlicePrediction:
    """The model's probabilities for one slice, in LABELS order."""

    index: int  # position in the series, patient-axis order (SliceInfo.index)
    sop_instance_uid: str
    z: float
    probabilities: tuple[float, ...]

    def by_label(self) -> dict[str, float]:
        return dict(zip(LABELS, self.probabilities, strict=True))


@dataclass(frozen=True, eq=False)
class StudyPrediction:
    """Per-slice probabilities of one series and the study-level scores derived from them.

    ``probs`` is float32 (slices, 6), read-only (it may be shared with the cache). Without a
    slice-context model they are the CNN's own, and a study's score for a label is the maximum
    over its slices (one bleeding slice makes a bleeding study). With one (core.model.context),
    ``probs`` are the context-refined probabilities, ``cnn_probs`` the CNN's own, the study's
    'any' score is the context model's study output and the subtypes' the maximum of their
    refined slice probabilities. ``peak_slice`` is the index of the slice with the highest
    probability of each label.
    """

    study_instance_uid: str
    series_instance_uid: str
    weights_identity: str
    slices: tuple[SlicePrediction, ...]
    probs: np.ndarray
    study_scores: dict[str, float]
    peak_slice: dict[str, int]
    seconds: float  # wall time of the predict call that returned this (≈ 0 when cached)
    cached: bool = False
    #: The CNN's own per-slice probabilities when a slice-context model refined ``probs``.
    cnn_probs: np.ndarray | None = None
    #: Bleed probability per cell of each slice (slices, h, w), float16, read-only, on a
    #: grid covering the whole slice (core.model.bleed_map); None for a model without the
    #: segmentation head. Computed in the same pass as ``probs``.
    bleed_map: np.ndarray | None = None
    #: Whether the model that made it is one this version shipped (core.model.integrity);
    #: False unless the Predictor's model was verified, so every output can say
    #: "unverified model" without being handed the model.
    model_verified: bool = False

    @property
    def model_status(self) -> str:
        """ "verified" or "unverified model", as every output shows it."""
        return "verified" if self.model_verified else UNVERIFIED_LABEL

    @property
    def context_used(self) -> bool:
        return self.cnn_probs is not None

    @property
    def study_method(self) -> str:
        """How the study-level 'any' score was obtained, for people reading it."""
        return STUDY_BY_CONTEXT if self.context_used else STUDY_BY_MAX

    @property
    def top_subtype(self) -> str:
        """The hemorrhage subtype (not 'any') with the highest study score."""
        return max(LABELS[1:], key=lambda label: self.study_scores[label])

    def peak_slices_json(self) -> dict[str, dict[str, int]]:
        """Each label's peak slice, named for both ways of counting: ``peak_slice_index``
        counts from 0 like ``slices[].index``, ``peak_slice_number`` from 1 like the page,
        the PDF and the CLI table."""
        return {
            "peak_slice_index": {k: int(v) for k, v in self.peak_slice.items()},
            "peak_slice_number": {k: int(v) + 1 for k, v in self.peak_slice.items()},
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary with DICOM keywords; carries no patient data. Probabilities
        carry 6 decimals (what a float32 holds), not the 17 digits of a Python float."""
        return {
            "StudyInstanceUID": self.study_instance_uid,
            "SeriesInstanceUID": self.series_instance_uid,
            "model_status": self.model_status,
            "probabilities": {k: round(v, 6) for k, v in self.study_scores.items()},
            "study_score": self.study_method,
            **self.peak_slices_json(),
            "top_subtype": self.top_subtype,
            "slices": [
                {
                    "index": s.index,
                    "SOPInstanceUID": s.sop_instance_uid,
                    "z": round(s.z, 4),
                    "probabilities": {k: round(v, 6) for k, v in s.by_label().items()},
                    **(
                        {
                            "cnn_probabilities": {
                                k: round(float(v), 6)
                                for k, v in zip(LABELS, self.cnn_probs[i], strict=True)
                            }
                        }
                        if self.cnn_probs is not None
                        else {}
                    ),
                }
                for i, s in enumerate(self.slices)
            ],
        }


@dataclass(frozen=True, eq=False)
class SeriesScores:
    """What one pass over a series gives, as the cache keeps it: probabilities (slices, 6)
    and, for a model with the segmentation head, the bleed map (slices, h, w)."""

    probs: np.ndarray
    bleed_map: np.ndarray | None = None


@dataclass(frozen=True)
class InferenceTiming:
    """Where a predict call spent its time; ``forward_s`` is the network alone."""

    n_slices: int
    total_s: float
    forward_s: float
    batch_size: int
    device: str
    cached: bool
    backend: str = "torch fp32"

    @property
    def outside_forward_share(self) -> float:
        return 0.0 if self.total_s <= 0 else max(0.0, 1.0 - self.forward_s / self.total_s)


# --------------------------------------------------------------------------- cache


class ResultCache:
    """Bounded, thread-safe LRU of per-series results (SeriesScores).

    Concurrent requests for the same key compute once: the others wait for that result
    (a dashboard rerun while a study is being scored must not score it twice).
    """

    def __init__(self, max_entries: int = CACHE_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("a cache needs room for at least one entry")
        self.max_entries = max_entries
        self._data: OrderedDict[Hashable, SeriesScores] = OrderedDict()
        self._pending: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def _get(self, key: Hashable) -> SeriesScores | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def get_or_compute(
        self, key: Hashable, compute: Callable[[], SeriesScores]
    ) -> tuple[SeriesScores, bool]:
        """(value, was_cached); ``compute`` runs at most once at a time per key."""
        value = self._get(key)
        if value is not None:
            return value, True
        with self._lock:
            key_lock = self._pending.setdefault(key, threading.Lock())
        with key_lock:
            value = self._get(key)
            if value is not None:
                return value, True
            try:
                value = compute()
                with self._lock:
                    self._data[key] = value
                    self._data.move_to_end(key)
                    while len(self._data) > self.max_entries:
                        self._data.popitem(last=False)
            finally:
                with self._lock:
                    self._pending.pop(key, None)
        return value, False


#: Shared by every Predictor of the process: a result depends only on pixels and weights.
RESULT_CACHE = ResultCache()


# --------------------------------------------------------------------------- helpers

_cpu_lock = threading.Lock()
_cpu_configured = False

#: glibc mallopt parameters, and the size below which freed memory stays in the process.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30

# One lock per model object, so that every Predictor (and its explainer) on a shared model
# serialises against the others.
_model_locks: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_model_locks_guard = threading.Lock()


def _lock_for(model: nn.Module) -> threading.Lock:
    with _model_locks_guard:
        lock = _model_locks.get(model)
        if lock is None:
            lock = _model_locks[model] = threading.Lock()
        return lock


def usable_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike cpu_count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """True when the CPU has bf16 units (AMX or AVX-512-BF16). Detected, never assumed: on an
    AVX2-only CPU bf16 runs about 100× slower than fp32, on these about twice as fast."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def keep_large_buffers() -> bool:
    """Let glibc reuse large freed blocks instead of unmapping them; True when it took effect.

    A batch's activations are tens of MB per layer, above glibc's mmap threshold (at most
    32 MB, often less), so each one is mapped and unmapped again: every forward pass then
    page-faults through gigabytes of freshly zeroed pages. Measured here (ResNeXt-101 32x4d,
    256 px, batch 16, 2 cores): 108 ms/slice with a third of it in the kernel, 68 ms/slice
    with this. The cost: up to ``_KEEP_BYTES`` of freed memory stays with the process.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt  # glibc only (musl has no mallopt)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
    )


def _configure_cpu() -> None:
    """Once per process: torch's intra-op pool on every usable core, large buffers kept."""
    global _cpu_configured
    with _cpu_lock:
        if _cpu_configured:
            return
        n = usable_cpus()
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        if not keep_large_buffers():
            log.info("could not tune the memory allocator; CPU inference may be slower")
        _cpu_configured = True


def resolve_device(device: str | None) -> str:
    """'cuda' when a GPU is usable, else 'cpu'; an explicit 'cuda' without one is an error."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelError(
                "A GPU was requested, but PyTorch finds none on this machine. Run on the CPU "
                "instead (--device cpu)."
            )
        return device
    if device != "cpu":
        raise ModelError(f"Unknown device {device!r}: use 'cpu' or 'cuda'.")
    return device


IN_TRAINING_NOTE = (
    "This study was part of the model's training data: its probabilities are in-sample and "
    "say nothing about how the model does on new studies."
)

#: Most slices given a Grad-CAM for localisation (each costs about one forward pass).
MAX_LOCALISED_SLICES = 24

STUDY_BY_MAX = "maximum over the slices"
STUDY_BY_CONTEXT = "slice-context model (1-D convolution over the slices in order)"


def _build_prediction(
    series: Series,
    study_instance_uid: str,
    identity: str,
    cnn_probs: np.ndarray,
    seconds: float,
    cached: bool,
    context: SliceContext | None = None,
    bleed_map: np.ndarray | None = None,
    model_verified: bool = False,
) -> StudyPrediction:
    if context is not None:
        probs, study_any = apply_context(context, cnn_probs)
        probs.flags.writeable = False
    else:
        probs, study_any = cnn_probs, float(cnn_probs[:, 0].max())
    peaks = probs.argmax(axis=0)  # first slice reaching the maximum on ties
    pairs = list(zip(LABELS, peaks, strict=True))
    slices = tuple(
        SlicePrediction(
            index=info.index,
            sop_instance_uid=info.sop_instance_uid,
            z=info.z,
            probabilities=tuple(float(v) for v in row),
        )
        for info, row in zip(series.slices, probs, strict=True)
    )
    return StudyPrediction(
        study_instance_uid=study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        weights_identity=identity,
        model_verified=model_verified,
        slices=slices,
        probs=probs,
        study_scores={
            label: study_any if j == 0 else float(probs[p, j]) for j, (label, p) in enumerate(pairs)
        },
        peak_slice={label: series.slices[int(p)].index for label, p in pairs},
        seconds=seconds,
        cached=cached,
        cnn_probs=cnn_probs if context is not None else None,
        bleed_map=bleed_map,
    )


# --------------------------------------------------------------------------- predictor


class Predictor:
    """Scores every slice of a series with one loaded model; safe to share between threads.

    The model is moved to ``device`` and to channels_last memory format in place (the layout
    the CPU and GPU convolution kernels are fastest with). On the CPU torch uses every usable
    core; bf16 and torch.compile are deliberately not used there (bf16 was measured about
    100x slower on CPUs without bf16 units; compiling takes minutes). On a GPU the forward
    pass runs under fp16 autocast (``half=False`` to turn it off).

    ``backend`` ('torch', 'openvino' or 'auto'; default ``$ICH_BACKEND``, else 'auto') picks
    what runs the forward pass on the CPU: with 'openvino' or 'auto' the network is compiled by
    OpenVINO (core.inference.openvino_backend) at the fastest precision on offer that passes
    the load check, fastest as its speed probe measured (``precision`` forces one: 'int8',
    'bf16' or 'f32'); if that fails, torch runs it and one log line says why. torch stays the
    reference, and Grad-CAM always runs in torch. ``backend_name`` says what is actually used.
    ``batch_size``: slices per forward pass; None takes the speed probe's choice under
    OpenVINO and DEFAULT_BATCH_SIZE under torch.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        device: str | None = None,
        batch_size: int | None = None,
        *,
        half: bool | None = None,
        cache: ResultCache | None = None,
        use_context: bool = True,
        backend: str | None = None,
        precision: str | None = None,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.device = resolve_device(device)
        #: Slices per forward pass: as given, else the OpenVINO speed probe's choice, else
        #: DEFAULT_BATCH_SIZE (set again once the engine is open).
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE
        self.half = self.device.startswith("cuda") if half is None else half
        if self.half and not self.device.startswith("cuda"):
            raise ValueError("fp16 inference is only used on a GPU")
        if self.device == "cpu":
            _configure_cpu()
        self.loaded = loaded
        self.spec = loaded.spec
        self.model: nn.Module = loaded.model.to(  # type: ignore[call-overload]
            self.device, memory_format=torch.channels_last
        )
        self.model.eval()
        #: The slice-context model applied to the CNN's output (None: study score = maximum).
        self.context: SliceContext | None = loaded.context if use_context else None
        self.cache = RESULT_CACHE if cache is None else cache
        self.lock = _lock_for(self.model)
        #: Per-label temperature applied to the logits (the card's calibration).
        self.temperature = loaded.temperature
        self.explainer = GradCamExplainer(
            self.model, self.spec, lock=self.lock, temperature=self.temperature
        )
        #: Timing of the latest predict call of this Predictor (any thread).
        self.last_timing: InferenceTiming | None = None
        #: The OpenVINO engine running the forward pass, or None when torch runs it.
        self.engine: OpenVinoEngine | None = self._open_engine(backend, precision, batch_size)
        if batch_size is None and self.engine is not None and self.engine.batch_size:
            self.batch_size = self.engine.batch_size

    def _open_engine(
        self, backend: str | None, precision: str | None, batch_size: int | None
    ) -> OpenVinoEngine | None:
        """OpenVINO for the forward pass where asked (or 'auto') and possible; else None, with
        one log line saying why torch runs it instead."""
        wanted = requested_backend(backend)
        if wanted == TORCH:
            return None
        if self.device != "cpu":
            if wanted == OPENVINO:
                log.warning("OpenVINO runs on the CPU only; scoring with torch on %s", self.device)
            return None
        try:
            engine = open_engine(self.loaded, self.model, precision)
        except Exception as exc:  # any failure means: torch instead
            level = logging.INFO if wanted == AUTO else logging.WARNING
            log.log(level, "OpenVINO not used (%s); scoring with torch fp32", exc)
            return None
        log.info(
            "forward pass on %s, batch %d%s (%d streams, %d threads; load check max |dp| %.2g, "
            "bleed map %.2g; speed probe: %s)",
            engine.name,
            batch_size or engine.batch_size or DEFAULT_BATCH_SIZE,
            " (as given)" if batch_size else "",
            engine.streams,
            engine.threads,
            engine.check.max_dp if engine.check else float("nan"),
            engine.check.max_dmap if engine.check else float("nan"),
            engine.probe.summary() if engine.probe else "not run",
        )
        return engine

    @property
    def backend_name(self) -> str:
        """What runs the forward pass, for people: 'OpenVINO 2026.4.1 bf16', 'torch fp32'..."""
        if self.engine is not None:
            return self.engine.name
        return f"torch {'fp16' if self.half else 'fp32'}"

    @classmethod
    def from_default(
        cls,
        device: str | None = None,
        *,
        weights_dir: str | Path | None = None,
        batch_size: int | None = None,
        backend: str | None = None,
        allow_unverified: bool = False,
    ) -> Predictor:
        """The installed model: the newest card in ``weights_dir`` (default ``$ICH_WEIGHTS`` or
        weights/); ModelError when there is none, UnverifiedModelError when it is not on the
        manifest and ``allow_unverified`` is not given."""
        weights_dir = default_weights_dir() if weights_dir is None else weights_dir
        card = find_default_checkpoint(weights_dir)
        if card is None:
            raise ModelError(
                "No trained model is installed: the weights folder "
                f"({_shown(Path(weights_dir))}) holds no model card (.json). Copy a trained "
                "model's card and .safetensors files there; heatmaps and probabilities are "
                "not available until then."
            )
        resolved = resolve_device(device)
        loaded = load_checkpoint(card, device=resolved, allow_unverified=allow_unverified)
        return cls(loaded, device=resolved, batch_size=batch_size, backend=backend)

    @property
    def weights_identity(self) -> str:
        return self.loaded.weights_identity

    def cache_key(self, series: Series) -> tuple[Hashable, ...]:
        """Pixels × weights (plus what else changes the numbers: input size, windows, the
        backend and its precision)."""
        return (
            series.pixel_hash,
            self.weights_identity,
            self.spec.input_size,
            self.spec.windows,
            self.temperature,
            self.backend_name,
            # The whole card (thresholds and summary too) and whether it is verified, so a
            # result is never shown under another card's verdict.
            self.loaded.trust,
        )

    def warm_up(self) -> None:
        """One small forward pass, so the first study does not pay for kernel selection."""
        size = self.spec.input_size
        x = torch.zeros(1, 3, size, size).contiguous(memory_format=torch.channels_last)
        self.forward(x)

    def predict(
        self,
        source: Study | Series,
        progress: ProgressCallback | None = None,
        *,
        study_instance_uid: str | None = None,
    ) -> StudyPrediction:
        """Probabilities for every slice of a Study's default series (or of the Series given,
        with its ``study_instance_uid``); from the cache when these pixels were scored by
        these weights before."""
        start = time.perf_counter()
        if isinstance(source, Study):
            series = source.default_series
            study_uid = source.study_instance_uid
        elif isinstance(source, Series):
            if study_instance_uid is None:
                raise ValueError("predict(series) needs the series' study_instance_uid")
            series, study_uid = source, study_instance_uid
        else:
            raise TypeError(f"expected a Study or a Series, got {type(source).__name__}")
        n = series.n_slices
        forward_s = 0.0

        def compute() -> SeriesScores:
            nonlocal forward_s
            scores, forward_s = self._score(series, progress)
            return scores

        scores, cached = self.cache.get_or_compute(self.cache_key(series), compute)
        if cached and progress is not None:
            progress(n, n)
        seconds = time.perf_counter() - start
        self.last_timing = InferenceTiming(
            n_slices=n,
            total_s=seconds,
            forward_s=forward_s,
            batch_size=self.batch_size,
            device=self.device,
            cached=cached,
            backend=self.backend_name,
        )
        if not cached:
            log.info(
                "scored %d slices in %.2f s (%.0f%% in the network) on %s, %s",
                n,
                seconds,
                100 * forward_s / seconds if seconds else 0,
                self.device,
                self.backend_name,
            )
        return _build_prediction(
            series,
            study_uid,
            self.weights_identity,
            scores.probs,
            seconds,
            cached,
            self.context,
            scores.bleed_map,
            self.loaded.trust.verified,
        )

    def explain(self, series: Series, slice_index: int, label: str) -> Heatmap:
        """Grad-CAM of ``label`` on one slice (its index in the series), on the slice's grid."""
        if not 0 <= slice_index < series.n_slices:
            raise IndexError(
                f"slice {slice_index} is outside this series (0..{series.n_slices - 1})"
            )
        return self.explainer.explain(series.hu[slice_index], label)

    def seen_in_training(self, study_instance_uid: str) -> bool:
        """Whether the card lists this study among the model's training studies: its
        probabilities are then in-sample and say nothing about how the model does on new
        studies."""
        split = self.loaded.card.split or {}
        return study_instance_uid in set(split.get("train_study_uids") or ())

    @property
    def study_threshold(self) -> float | None:
        """The card's operating threshold for the study P(any), or None when it records none."""
        value = self.loaded.card.threshold("study_any")
        return float(value) if isinstance(value, int | float) and 0 < value < 1 else None

    @property
    def slice_threshold(self) -> float:
        """P(any) from which a slice counts as flagged: the card's operating threshold (chosen
        on cross-validation data), else 0.5."""
        value = self.loaded.card.threshold("slice_any")
        return float(value) if isinstance(value, int | float) and 0 < value < 1 else 0.5

    @property
    def has_bleed_map(self) -> bool:
        """Whether the model gives a bleed map (segmentation head) with its probabilities."""
        return has_bleed_map(self.model)

    @property
    def bleed_map_threshold(self) -> float:
        """The map's probability from which a pixel is blood: the card's calibration (chosen
        on validation slices with synthetic bleeds), else MAP_THRESHOLD."""
        value = (self.loaded.card.calibration or {}).get("bleed_map_threshold")
        return float(value) if isinstance(value, int | float) and 0 < value < 1 else MAP_THRESHOLD

    @property
    def bleed_map_density(self) -> DensityRule:
        """The density rule that refines the map's outline: the card's calibration (chosen
        with the map threshold on synthetic bleeds), else the dense rule models were measured
        with before rules were calibrated."""
        rule = DensityRule.from_dict((self.loaded.card.calibration or {}).get("bleed_map_density"))
        return rule if rule is not None else DENSE

    def localise(
        self,
        series: Series,
        prediction: StudyPrediction,
        *,
        label: str = "any",
        threshold: float | None = None,
        max_slices: int = MAX_LOCALISED_SLICES,
        map_threshold: float | None = None,
        map_density: DensityRule | None = None,
    ) -> BleedEstimate:
        """Bleed mask and volume of the series.

        With the segmentation head: from the bleed map computed with the probabilities (no
        further pass), every slice, at the card's map threshold. Without it (the fallback,
        named as such in ``method``): density rules on the slices flagged for ``label`` (at
        most ``max_slices``, the most probable), each gated by its Grad-CAM map.
        ``map_threshold`` and ``map_density`` replace the card's map threshold and density
        rule (to measure others).
        """
        spacing = series.pixel_spacing or (1.0, 1.0)
        z = [s.z for s in series.slices]
        if prediction.bleed_map is not None:
            cut = self.bleed_map_threshold if map_threshold is None else map_threshold
            rule = self.bleed_map_density if map_density is None else map_density
            mask = mask_from_bleed_map(series.hu, prediction.bleed_map, spacing, cut, rule=rule)
            return dataclasses.replace(
                measure(mask, z, spacing),
                threshold=None,
                method=MAP_METHOD.format(
                    threshold=cut, floor=rule.floor_hu, above=rule.above_brain_hu
                ),
                notice=MAP_NOTICE,
            )
        j = LABELS.index(label)
        cut = self.slice_threshold if threshold is None else threshold
        p = np.asarray(prediction.probs)[:, j]
        flagged = [int(i) for i in np.argsort(-p, kind="stable")[:max_slices] if p[i] >= cut]
        cams = {i: self.explain(series, i, label).cam for i in flagged}
        estimate = estimate_bleed(series.hu, z, spacing, flagged, cams)
        return dataclasses.replace(estimate, threshold=float(cut))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities (float32, CPU) of a model-ready batch (n, 3, size, size):
        sigmoid(logit / T) with the card's temperatures; under the model's lock."""
        return self._forward(x, with_map=False)[0]

    def forward_with_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``forward`` and, for a model with the segmentation head, the bleed map's
        probabilities (n, size/4, size/4), float32 on the CPU, from the same pass."""
        return self._forward(x, with_map=self.has_bleed_map)

    def _forward(self, x: torch.Tensor, with_map: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = torch.tensor(self.temperature, dtype=torch.float32)
        if self.engine is not None:
            with self.lock:
                logits_np, map_np = self.engine.infer(x.cpu().numpy())
            probs = torch.sigmoid(torch.from_numpy(logits_np) / t)
            if with_map and map_np is not None:
                return probs, torch.sigmoid(torch.from_numpy(map_np))[:, 0]
            return probs, None
        x = x.to(self.device, non_blocking=True)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.half else nullcontext()
        with self.lock, torch.inference_mode(), autocast:
            bleed = None
            if with_map:
                logits, map_logits = self.model(x, with_map=True)
                bleed = torch.sigmoid(map_logits.float())[:, 0].cpu()
            else:
                logits = self.model(x)
            logits = logits.float()
            return torch.sigmoid(logits / t.to(logits.device)).cpu(), bleed

    # ----------------------------------------------------------------------- internals

    def _score(
        self, series: Series, progress: ProgressCallback | None
    ) -> tuple[SeriesScores, float]:
        """(probabilities and bleed map, seconds in the network) for every slice, batch by
        batch."""
        n = series.n_slices
        out = np.empty((n, len(LABELS)), dtype=np.float32)
        maps: np.ndarray | None = None
        forward_s = 0.0
        if progress is not None:
            progress(0, n)
        for lo in range(0, n, self.batch_size):
            hi = min(n, lo + self.batch_size)
            x = model_input(series.hu[lo:hi], self.spec.input_size, self.spec.windows)
            if self.engine is None:  # OpenVINO takes the plain (NCHW) layout
                x = x.contiguous(memory_format=torch.channels_last)
            t = time.perf_counter()
            probs, bleed = self.forward_with_map(x)
            forward_s += time.perf_counter() - t
            out[lo:hi] = probs.numpy()
            if bleed is not None:
                if maps is None:
                    maps = np.empty((n, *bleed.shape[1:]), dtype=np.float16)
                maps[lo:hi] = bleed.numpy()
            if progress is not None:
                progress(hi, n)
        if not np.isfinite(out).all() or (maps is not None and not np.isfinite(maps).all()):
            raise ModelError(
                "The model produced invalid numbers (NaN or infinity) on this series; no "
                "probabilities are shown. The weights may be damaged: re-install the model."
            )
        out.flags.writeable = False
        if maps is not None:
            maps.flags.writeable = False
        return SeriesScores(out, maps), forward_s


def _shown(path: Path) -> str:
    """A folder as a person recognises it: relative to the project when it lies inside."""
    root = Path(__file__).resolve().parents[2]
    try:
        return str(path.resolve().relative_to(root)) + "/"
    except ValueError:
        return str(path)


__all__ = [
    "CACHE_ENTRIES",
    "RESULT_CACHE",
    "InferenceTiming",
    "Predictor",
    "ProgressCallback",
    "ResultCache",
    "SeriesScores",
    "SlicePrediction",
    "StudyPrediction",
    "resolve_device",
    "usable_cpus",
]
