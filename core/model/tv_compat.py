"""Make ``import torchvision`` work beside a CPU-only torch whose build differs from it.

Why: PyPI's torchvision 0.28.0 is a CUDA build. Beside the CPU torch 2.13.0 its compiled ops
(``torchvision/_C.so``) cannot load, and ``import torchvision`` then fails with
"operator torchvision::nms does not exist" while registering Python fakes for those ops.
The model builders we use (ResNet/Bottleneck) are pure Python and need none of the ops.

So, before torchvision is imported: try to load ``_C.so`` the normal way; only if that fails,
declare the two op schemas torchvision's import touches (``nms``, ``qnms``) with
torch.library, without any implementation (this app never calls them). With a matching
torch/torchvision pair the first step succeeds and nothing else happens.

Import this module (``import core.model.tv_compat``) before any ``import torchvision``; the
model room's ``__init__`` does, so every module of core.model has it first.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: Kept alive for the process: dropping a torch.library.Library removes its definitions.
_LIBRARY: torch.library.Library | None = None


def _schema_exists(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def ensure_torchvision_importable() -> None:
    """Idempotent; see the module docstring."""
    global _LIBRARY
    if _schema_exists("nms"):
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return  # torchvision not installed: its import will fail with pip's usual message
    so = Path(spec.origin).parent / "_C.so"
    if so.exists():
        try:
            torch.ops.load_library(str(so))
        except OSError as exc:  # undefined symbols of another torch/CUDA build
            log.info(
                "torchvision's compiled ops do not load beside this torch (%s)", type(exc).__name__
            )
    if _schema_exists("nms"):
        return
    _LIBRARY = torch.library.Library("torchvision", "DEF")  # noqa: TID251 - see docstring
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    log.info("torchvision ops unavailable; declared nms/qnms schemas so its models import")


ensure_torchvision_importable()
