"""The training run's resume point (``last.pt``): what it holds, how it is written and read,
and which settings a resumed run must keep.

Why a plain dict of tensors and numbers: ``--resume`` loads it with
``torch.load(weights_only=True)``, which cannot run code; the random states of torch, NumPy and
Python go in as tensors and numbers so that the resumed run draws the same batches.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = "ich-review-train-state/1"

#: Arguments that decide the data order and the schedule: a resumed run must keep them.
RESUME_FIXED = (
    "arch",
    "size",
    "batch_size",
    "epochs",
    "lr",
    "weight_decay",
    "warmup",
    "seed",
    "folds",
    "fold",
    "val_fraction",
    "val_hash",
    "no_val",
    "ema",
    "no_augment",
    "world_size",
    "bleed_map",
    "synthetic",
    "map_weight",
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and numbers only, so the checkpoint loads with weights_only."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64)},
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    del name, gauss
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain(value: object) -> object:
    """argparse values → str/int/float/bool/None/list (what weights_only loading accepts)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def state_digest(state: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 over a model's state dict (names, dtypes, shapes, bytes): equal digests on two
    ranks mean equal models."""
    items = state.state_dict() if isinstance(state, nn.Module) else state
    h = hashlib.sha256()
    for key, t in sorted(items.items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def derived_seed(text: str) -> int:
    """A 64-bit seed from a text (sha256): the same draws for the same run, step or image,
    whatever the process, without a shared random state."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def step_seed(seed: int, step: int, rank: int) -> int:
    return derived_seed(f"augment:{seed}:{step}:{rank}") >> 1


def atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def changed_settings(saved: Mapping[str, object], now: Mapping[str, object]) -> list[str]:
    """The RESUME_FIXED settings that differ between a checkpoint's run and this one, as
    ``name (was X, now Y)``. A setting the saved run did not record yet (a checkpoint of an
    earlier version) counts as unchanged when this run keeps its default."""
    return [
        f"{k} (was {saved.get(k)!r}, now {now.get(k)!r})"
        for k in RESUME_FIXED
        if saved.get(k) != now.get(k)
        and not (k not in saved and now.get(k) in _DEFAULTS.get(k, ()))
    ]


#: Values that a setting absent from an older checkpoint stands for.
_DEFAULTS: dict[str, tuple[object, ...]] = {
    "bleed_map": (False,),
    "synthetic": (0.0,),
    "map_weight": (1.0,),
}
