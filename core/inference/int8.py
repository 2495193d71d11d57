"""int8 by post-training quantization (NNCF): the converted IR, quantized on real slices, kept
beside it in the app's data folder.

Why: on a CPU without bf16 units (and on many with them) int8 convolutions are the fastest
OpenVINO has, and a ResNeXt is nearly all convolutions. Why post-training: it needs a few
hundred forward passes over real slices, not a training run.

How it is shaped:

* ``quantize_ir`` runs ``nncf.quantize`` on the f32 IR (classifier and bleed-map head in one
  graph, so both outputs come out of the one quantized model, under their names) with the
  calibration slices given (core.training.int8_check chooses them from the training split).
  Activation ranges are the minimum and maximum over every calibration slice, not NNCF's
  default mean of per-slice extremes: bleeds give the largest activations, and averaging
  clipped them (measured on the shipped model, 569 validation slices: logits off by up to 4,
  bleed-map cells flipped from 0 to 1; with min/max, 0.4 at most). Bias correction is NNCF's
  full one, not its fast one: it takes minutes instead of one, and halves the largest
  probability change (0.064 → 0.038 on the same slices); the command runs once.
* ``save_int8`` writes it atomically into the f32 IR's folder as
  ``int8-nncf<version>-cal<calibration digest>`` with ``int8.json`` (what it was built from
  and its accuracy figures), removing older int8 folders there; the engine
  (core.inference.openvino_backend) offers int8 only where such a folder exists, and holds it
  to the same load check as every precision.
* NNCF is imported only here, and only when quantizing: a start of the app never pays for it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.inference.openvino_backend import (
    INT8_RECORD,
    int8_folder_name,
    ir_folder,
    nncf_version,
    openvino_version,
)

if TYPE_CHECKING:
    from core.model.checkpoint import LoadedModel

log = logging.getLogger(__name__)


def quantize_ir(ir: Any, calibration: np.ndarray) -> Any:
    """The IR quantized to int8 by NNCF, calibrated on ``calibration`` (model inputs,
    (n, 3, size, size) float32): every slice is one calibration item, weights per channel,
    activations per tensor with their ranges over all slices. The outputs keep their names."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    if calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError(f"calibration slices must be (n, 3, h, w), got {calibration.shape}")
    items = [
        np.ascontiguousarray(calibration[i : i + 1], np.float32) for i in range(len(calibration))
    ]
    start = time.perf_counter()
    quantized = nncf.quantize(
        ir,
        nncf.Dataset(items),
        preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(items),
        fast_bias_correction=False,
        advanced_parameters=AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX
        ),
    )
    names = [sorted(o.get_names()) for o in ir.outputs]
    if [sorted(o.get_names()) for o in quantized.outputs] != names:
        raise RuntimeError("the quantized model lost its output names")
    log.info(
        "quantized the model to int8 on %d slices in %.0f s",
        len(items),
        time.perf_counter() - start,
    )
    return quantized


def save_int8(
    loaded: LoadedModel,
    quantized: Any,
    calibration_digest: str,
    record: dict[str, Any],
    root: Path | None = None,
) -> Path:
    """Write the int8 IR into the f32 IR's folder (which ``load_ir`` made) with its record,
    atomically; older int8 folders there (another NNCF, another calibration set) are removed.
    Returns the folder."""
    import openvino as ov

    base = ir_folder(loaded, root)
    if not (base / "model.xml").is_file():
        raise FileNotFoundError(f"the f32 IR is not in {base}: convert it first (load_ir)")
    target = base / int8_folder_name(calibration_digest)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
    full = {
        "weights_sha256": loaded.weights_sha256,
        "model": loaded.name,
        "input_size": loaded.spec.input_size,
        "openvino": (openvino_version() or "").split("-")[0],
        "nncf": nncf_version(),
        "calibration_digest": calibration_digest,
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **record,
    }
    try:
        ov.save_model(quantized, tmp / "model.xml", compress_to_fp16=False)
        (tmp / INT8_RECORD).write_text(json.dumps(full, indent=1, sort_keys=True), "utf-8")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in base.iterdir():
        if old.is_dir() and old.name.startswith("int8-") and old != target:
            shutil.rmtree(old, ignore_errors=True)
            log.info("removed the older int8 model %s", old.name)
    return target


__all__ = ["quantize_ir", "save_int8"]
