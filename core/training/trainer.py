"""The training run (``python -m core.train`` is its door): the slice classifier on labelled
head-CT slices.

Reads our study zips (``--zips``) or the challenge's own layout (``--dicom-dir`` with
``stage_2_train.csv``), splits by patient (k-fold or a fixed share; never slices of one study
on both sides), and trains with the challenge's weighted BCE, AdamW and a cosine schedule.
One process on a CPU or a GPU, or ``torchrun --nproc-per-node N`` for DistributedDataParallel
(gloo on CPU, nccl on GPU): the multi-machine path is torch's own, not ours.

Why the checkpoint is a plain dict of tensors and numbers: ``--resume`` loads it with
``torch.load(weights_only=True)``, which cannot run code, and it continues from the saved
optimizer step with the same data order (the sampler is seeded by seed and epoch, each batch's
augmentation by seed, step and rank). The final weights are written with
``core.model.checkpoint.save_checkpoint`` (safetensors + model card), which is what the app loads.

Outputs in ``--out``: ``last.pt`` (resume point), ``history.jsonl`` (one line per epoch),
``val_predictions.json`` (the ``studies`` layout of ``core.predict --json``, plus each slice's
target), ``embeddings.npz`` (pooled CNN features of every slice, for the slice-context model).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import shlex
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from core.imaging.windowing import window_span
from core.inference.predictor import (
    SlicePrediction,
    StudyPrediction,
    cpu_has_bf16,
    keep_large_buffers,
    usable_cpus,
)
from core.labels import LABELS, LOSS_WEIGHTS
from core.model.bleed_map import map_loss, map_targets
from core.model.checkpoint import (
    ModelSpec,
    build_model,
    save_checkpoint,
    weights_identity,
)
from core.notice import NOTICE
from core.training.dataset import (
    AugmentConfig,
    SliceDataset,
    SliceTable,
    augment_with_mask,
    from_dicom_folder,
    from_png_folder,
    from_zips,
    model_batch,
    read_challenge_labels,
    read_id_column,
    split_by_group,
    split_by_hash,
    zip_paths,
)
from core.training.metrics import roc_auc, weighted_log_loss
from core.training.synthetic import SyntheticBleedSlices

log = logging.getLogger("core.training.trainer")

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = "ich-review-train-state/1"
DEFAULT_FOLDS = 5

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

#: Key prefixes of wrapped state dicts (DDP, Lightning/timm wrappers, torch.compile).
_INIT_PREFIXES = ("module.", "model.", "_orig_mod.")
#: Classifier heads of torchvision/timm ResNets: never taken from an ImageNet state dict.
_HEAD_PREFIXES = ("fc.", "head.", "classifier.", "last_linear.")


def ema_with_warmup(decay: float) -> Any:
    """AveragedModel's ``multi_avg_fn`` for an exponential moving average whose decay grows
    as ``min(decay, (1 + n) / (10 + n))`` with the update count n.

    Why the warm-up: with a constant 0.998 the average still holds 15 % of the random
    initial weights after 960 steps, and that blend of far-apart networks was measured to
    answer the same probability for every slice (validation AUC 0.5 while the weights
    themselves reached 0.79). Early on the average now follows the weights closely.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: Any) -> None:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # BatchNorm's step counters: the current ones
            for mine, theirs in zip(averaged, current, strict=True):
                mine.copy_(theirs)

    return update


# --------------------------------------------------------------------------- metrics


def validation_metrics(y_true: np.ndarray, y_prob: np.ndarray) -> dict[str, float]:
    """Weighted log loss and ROC AUC per label (labels with one class only are left out)."""
    out = {"weighted_log_loss": round(weighted_log_loss(y_true, y_prob), 6)}
    for j, label in enumerate(LABELS):
        auc = roc_auc(y_true[:, j], y_prob[:, j])
        if auc is not None:
            out[f"auc_{label}"] = round(auc, 6)
    return out


def weighted_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of Σ_j w_j·BCE_j / Σ_j w_j with the challenge's weights (any: 2)."""
    w = torch.tensor(LOSS_WEIGHTS, device=logits.device, dtype=torch.float32)
    per = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return ((per * w).sum(dim=1) / w.sum()).mean()


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------- --init


@dataclass(frozen=True)
class InitReport:
    loaded: int
    model_tensors: int
    head_skipped: int
    wrong_shape: int
    unexpected: int

    def __str__(self) -> str:
        return (
            f"initialised {self.loaded} of {self.model_tensors} tensors of the model "
            f"(head left random: {self.head_skipped} skipped; {self.wrong_shape} of another "
            f"shape; {self.unexpected} not in this architecture)"
        )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unpickling refused or file damaged
            raise ValueError(
                f"--init {path.name}: cannot be read as a state dict without running code "
                f"from it ({type(exc).__name__}). Save it with torch.save(model.state_dict()) "
                "or as .safetensors."
            ) from None
    for _ in range(3):  # {"state_dict": {...}} / {"model": {...}} wrappers
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next(
                (obj[k] for k in ("state_dict", "model", "model_state", "module") if k in obj),
                None,
            )
            if isinstance(inner, dict):
                obj = inner
                continue
        break
    if not isinstance(obj, dict):
        raise ValueError(f"--init {path.name}: holds a {type(obj).__name__}, not a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_init_weights(model: nn.Module, path: str | os.PathLike[str]) -> InitReport:
    """Start from a torchvision/timm ResNeXt state dict the user brings (nothing is
    downloaded): prefixes such as ``module.`` are stripped, tensors matched by name and shape,
    the classifier head skipped (ours has 6 outputs). Raises ValueError when nothing matches."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--init {path}: no such file")
    state = _read_state_dict(path)
    target = model.state_dict()
    take: dict[str, torch.Tensor] = {}
    head = wrong = unexpected = 0
    for key, value in state.items():
        name = key
        while name.startswith(_INIT_PREFIXES):
            name = name.split(".", 1)[1]
        if name.startswith(_HEAD_PREFIXES):
            head += 1
        elif name not in target:
            unexpected += 1
        elif target[name].shape != value.shape:
            wrong += 1
        else:
            take[name] = value.to(target[name].dtype)
    if not take:
        raise ValueError(
            f"--init {path.name}: none of its {len(state)} tensors matches the model by name "
            f"and shape; is it a ResNet/ResNeXt state dict of this architecture?"
        )
    model.load_state_dict(take, strict=False)
    return InitReport(len(take), len(target), head, wrong, unexpected)


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device_choice: str | None) -> tuple[DistInfo, torch.device]:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; then one process per GPU (nccl) or CPU share
    (gloo). Without them: one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() if device_choice is None else device_choice == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda: PyTorch finds no GPU on this machine")
    if world <= 1:
        return DistInfo(), torch.device("cuda" if cuda else "cpu")
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if cuda:
        torch.cuda.set_device(info.local_rank)
        device = torch.device("cuda", info.local_rank)
    else:
        device = torch.device("cpu")
    if cuda:
        dist.init_process_group("nccl", timeout=timedelta(minutes=60), device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timedelta(minutes=60))
    return info, device


# --------------------------------------------------------------------------- state helpers


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
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


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value: Any) -> Any:
    """argparse values → str/int/float/bool/None/list (what weights_only loading accepts)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
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


def _step_seed(seed: int, step: int, rank: int) -> int:
    digest = hashlib.sha256(f"augment:{seed}:{step}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- trainer


@dataclass
class EpochResult:
    epoch: int
    global_step: int
    train_loss: float
    seconds: float
    slices: int
    val: dict[str, float] | None
    partial: bool = False  # stopped (--max-steps) or resumed inside the epoch


class Trainer:
    """One training run (this process's share of it under torchrun)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dist, self.device = init_distributed(args.device)
        self.cuda = self.device.type == "cuda"
        self.out: Path = args.out
        self.spec = ModelSpec(args.arch, args.size, bleed_map=args.bleed_map)
        self.augment_config = AugmentConfig.off() if args.no_augment else AugmentConfig()
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.init_report: InitReport | None = None
        self._val: tuple[np.ndarray, np.ndarray | None] | None = None  # last (probs, features)
        if self.cuda:
            amp = args.amp
            if amp == "auto":
                amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
            torch.backends.cudnn.benchmark = True
        else:
            # bf16 only where the CPU has bf16 units: elsewhere it is ~100× slower than fp32.
            amp = args.amp
            if amp == "auto":
                amp = "bf16" if cpu_has_bf16() else "off"
            if amp == "fp16":
                raise ValueError("--amp fp16 is for GPUs; on a CPU use bf16 or off")
            self.amp_dtype = torch.bfloat16 if amp == "bf16" else None
            if not self.dist.active:
                torch.set_num_threads(usable_cpus())
            keep_large_buffers()
        self.precision = {torch.float16: "fp16", torch.bfloat16: "bf16", None: "fp32"}[
            self.amp_dtype
        ]

    # ------------------------------------------------------------------- setup

    def setup(self) -> None:
        args = self.args
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        _seed_everything(args.seed)
        self.labels_path: Path = args.labels
        labels = read_challenge_labels(args.labels)
        self.table = self._load_table(labels)
        self._split()
        model = build_model(self.spec)
        if args.init is not None:
            self.init_report = load_init_weights(model, args.init)
            self._info(f"--init {args.init.name}: {self.init_report}")
        self.model = model.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        # The moving average (weights and BatchNorm statistics) is what is validated and
        # saved: on a few thousand slices the raw weights swing from epoch to epoch.
        self.ema: AveragedModel | None = (
            AveragedModel(self.model, multi_avg_fn=ema_with_warmup(args.ema), use_buffers=True)
            if args.ema > 0
            else None
        )
        self.ddp: nn.Module = (
            DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.cuda else None
            )
            if self.dist.active
            else self.model
        )
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, param in self.model.named_parameters():
            (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": args.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=args.lr,
        )
        n_train = len(self.train_idx)
        per_rank = math.ceil(n_train / self.dist.world)
        self.batch_size = args.batch_size
        self.drop_last = per_rank >= self.batch_size  # BatchNorm dislikes a last batch of 1
        self.steps_per_epoch = (
            per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)
        )
        self.total_steps = self.steps_per_epoch * args.epochs
        warmup = max(1, round(args.warmup * self.total_steps)) if args.warmup > 0 else 0
        total = self.total_steps

        def factor(step: int) -> float:
            return lr_factor(step, total, warmup)

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.sampler: DistributedSampler[Any] = DistributedSampler(
            SliceDataset(self.table, self.train_idx),
            num_replicas=self.dist.world,
            rank=self.dist.rank,
            shuffle=True,
            seed=args.seed,
        )
        if args.workers is None:
            lazy = not hasattr(self.table, "hu")
            args.workers = min(8, max(1, usable_cpus() // self.dist.world - 1)) if lazy else 0
        if args.resume:
            self.resume(self.out / CHECKPOINT_NAME)
        s = self.table.summary()
        self._info(
            f"{s['slices']} labelled slices of {s['studies']} studies ({s['source']}); "
            f"{self.split_info['description']}: {len(self.train_idx)} train / "
            f"{len(self.val_idx)} validation slices. {args.arch} at {args.size} px, "
            f"batch {self.batch_size}×{self.dist.world}, {self.steps_per_epoch} steps/epoch, "
            f"{self.device.type} {self.precision}"
            + (f", {self.dist.world} processes" if self.dist.active else "")
        )

    def _load_table(self, labels: dict[str, np.ndarray]) -> SliceTable:
        args = self.args
        if args.zips:
            self.inputs = [p.name for p in zip_paths(args.zips)]
            return from_zips(args.zips, labels, args.size, window_span(self.spec.windows))
        if args.png_dir is not None:
            self.inputs = [args.png_dir.name]
            return from_png_folder(args.png_dir, labels, args.size)
        self.inputs = [args.dicom_dir.name]
        cache = args.dicom_index or self.out / "dicom_index.csv"
        if self.dist.main and not Path(cache).is_file():
            self._info(f"indexing the headers of {args.dicom_dir} (once; cached in {cache})")
            from_dicom_folder(
                args.dicom_dir, labels, args.size, index_cache=cache, workers=usable_cpus()
            )
        self._barrier()
        return from_dicom_folder(
            args.dicom_dir,
            labels,
            args.size,
            index_cache=cache,
            hu_range=window_span(self.spec.windows),
        )

    def _split(self) -> None:
        args, table = self.args, self.table
        positive = table.labels[:, 0] > 0
        if args.no_val:
            self.train_idx, self.val_idx = np.arange(len(table)), np.zeros(0, dtype=np.int64)
            info: dict[str, Any] = {"kind": "none", "description": "no validation split"}
        elif args.folds is not None:
            self.train_idx, self.val_idx = split_by_group(
                table.groups, folds=args.folds, fold=args.fold, seed=args.seed, positive=positive
            )
            info = {
                "kind": "k-fold",
                "folds": args.folds,
                "fold": args.fold,
                "description": f"fold {args.fold} of {args.folds} by patient",
            }
        elif args.val_hash is not None:
            forced = read_id_column(args.val_ids) if args.val_ids is not None else []
            self.train_idx, self.val_idx = split_by_hash(table.sop_ids, args.val_hash, forced)
            info = {
                "kind": "id-hash",
                "val_hash": args.val_hash,
                "forced_val": args.val_ids.name if args.val_ids is not None else None,
                "forced_val_ids": len(set(forced)),
                "description": (
                    f"fixed split by image id: sha256(id) in the first {args.val_hash:.0%}"
                    + (f", plus the ids of {args.val_ids.name}" if args.val_ids else "")
                ),
            }
        else:
            self.train_idx, self.val_idx = split_by_group(
                table.groups, val_fraction=args.val_fraction, seed=args.seed, positive=positive
            )
            info = {
                "kind": "fixed",
                "val_fraction": args.val_fraction,
                "description": f"{args.val_fraction:.0%} of patients for validation",
            }
        train_studies = sorted(set(table.study_ids[self.train_idx].tolist()))
        val_studies = sorted(set(table.study_ids[self.val_idx].tolist()))
        if set(train_studies) & set(val_studies):  # split_by_group guarantees it; never trust
            raise RuntimeError("a study ended up on both sides of the split")
        info.update(
            grouped_by="patient (pseudonymous key of PatientID; the study when it is empty)",
            seed=args.seed,
            train_studies=len(train_studies),
            val_studies=len(val_studies),
            train_slices=len(self.train_idx),
            val_slices=len(self.val_idx),
            train_positive_any=int(positive[self.train_idx].sum()),
            val_positive_any=int(positive[self.val_idx].sum()),
        )
        if len(train_studies) + len(val_studies) <= 200:  # lists stay readable in a card
            info["train_study_uids"] = train_studies
            info["val_study_uids"] = val_studies
        self.split_info = info

    @property
    def final_model(self) -> nn.Module:
        """What is validated and saved: the moving average with --ema (unless --final
        weights), else the weights."""
        if self.ema is not None and self.args.final == "average":
            return self.ema.module
        return self.model

    # ------------------------------------------------------------------- checkpoint

    def _args_record(self) -> dict[str, Any]:
        rec = {k: _plain(v) for k, v in vars(self.args).items()}
        rec["world_size"] = self.dist.world
        rec["labels"] = Path(str(rec["labels"])).name
        return rec

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": {k: v.detach().to("cpu") for k, v in self.model.state_dict().items()},
            "ema": (
                {k: v.detach().to("cpu") for k, v in self.ema.state_dict().items()}
                if self.ema is not None
                else {}
            ),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "rng": _rng_state(),
            "args": self._args_record(),
            "history": self.history,
        }

    def save(self) -> Path:
        path = self.out / CHECKPOINT_NAME
        if self.dist.main:
            _atomic_save(self.checkpoint_state(), path)
        self._barrier()
        return path

    def resume(self, path: Path) -> None:
        if not path.is_file():
            raise ValueError(f"--resume: there is no checkpoint {path} to continue from")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"--resume: {path} is not a checkpoint of this trainer")
        saved, now = state["args"], self._args_record()
        changed = [k for k in RESUME_FIXED if saved.get(k) != now.get(k)]
        if changed:
            raise ValueError(
                "--resume must keep the settings of the run it continues; changed: "
                + ", ".join(f"{k} (was {saved.get(k)!r}, now {now.get(k)!r})" for k in changed)
            )
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.history = list(state["history"])
        self._info(
            f"resumed from {path.name} at step {self.global_step} (epoch {self.epoch + 1}, "
            f"step {self.step_in_epoch} of {self.steps_per_epoch})"
        )

    # ------------------------------------------------------------------- training

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(
        self,
        hu: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One optimizer step on a HU batch (B, 1, S, S); returns the loss (detached).

        With the bleed map, ``mask`` (B, 1, S, S) is each slice's blood and ``known`` (B,)
        whether that mask is known; the map's loss (× --map-weight) is added to the labels'.
        """
        self.ddp.train()
        hu = hu.to(self.device, non_blocking=True)
        if mask is not None:
            mask = mask.to(self.device, non_blocking=True)
        if self.args.no_augment:
            x = model_batch(hu, self.spec.windows)
        else:
            g = torch.Generator().manual_seed(
                _step_seed(self.args.seed, self.global_step, self.dist.rank)
            )
            x, mask = augment_with_mask(hu, mask, g, self.spec.windows, self.augment_config)
        x = x.contiguous(memory_format=torch.channels_last)
        target = target.to(self.device, non_blocking=True)
        with self._autocast():
            if self.spec.bleed_map:
                logits, map_logits = self.ddp(x, with_map=True)
            else:
                logits = self.ddp(x)
        loss = weighted_bce(logits, target)
        if self.spec.bleed_map:
            if mask is None or known is None:
                raise ValueError("a model with the bleed map trains on slices with masks")
            loss = loss + self.args.map_weight * map_loss(
                map_logits, map_targets(mask), known.to(self.device)
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.global_step += 1
        return loss.detach()

    def _batches(self, epoch: int) -> list[list[int]]:
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)
        b = self.batch_size
        return [
            order[i : i + b]
            for i in range(0, len(order), b)
            if not self.drop_last or i + b <= len(order)
        ]

    def _loader(
        self, dataset: SliceDataset | SyntheticBleedSlices, batches: list[list[int]]
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=self.args.workers,
            pin_memory=self.cuda,
            persistent_workers=False,
        )

    def fit(self) -> list[EpochResult]:
        """Train to the last epoch (or --max-steps), validating and saving after each epoch."""
        args = self.args
        results: list[EpochResult] = []
        masks = self.spec.bleed_map or args.synthetic > 0
        train_set: SliceDataset | SyntheticBleedSlices = (
            SyntheticBleedSlices(self.table, self.train_idx, args.synthetic, args.seed)
            if masks
            else SliceDataset(self.table, self.train_idx)
        )
        stop = args.max_steps is not None and self.global_step >= args.max_steps
        while self.epoch < args.epochs and not stop:
            epoch = self.epoch
            batches = self._batches(epoch)[self.step_in_epoch :]
            start, t0 = self.global_step, time.perf_counter()
            loss_sum = torch.zeros((), device=self.device)
            bar = tqdm(
                total=self.steps_per_epoch,
                initial=self.step_in_epoch,
                desc=f"epoch {epoch + 1}/{args.epochs}",
                unit="step",
                leave=False,
                dynamic_ncols=True,
                disable=True if (args.no_progress or not self.dist.main) else None,
            )
            if isinstance(train_set, SyntheticBleedSlices):
                train_set.epoch = epoch
            for hu, target, _, *mask_known in self._loader(train_set, batches):
                loss_sum += self.train_step(hu, target, *mask_known)
                self.step_in_epoch += 1
                bar.update(1)
                if self.global_step % 10 == 0 or self.step_in_epoch == self.steps_per_epoch:
                    bar.set_postfix(
                        loss=f"{loss_sum.item() / (self.global_step - start):.4f}",
                        lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                    )
                if args.max_steps is not None and self.global_step >= args.max_steps:
                    stop = True
                    break
            bar.close()
            steps = self.global_step - start
            seconds = time.perf_counter() - t0
            partial = steps < self.steps_per_epoch
            if self.step_in_epoch >= self.steps_per_epoch:
                self.epoch, self.step_in_epoch = epoch + 1, 0
            final = stop or self.epoch >= args.epochs
            self._sync_buffers()
            train_loss = self._mean_across_ranks(loss_sum, steps)
            val = self._validate(features=final and not args.no_embeddings)
            result = EpochResult(
                epoch + 1,
                self.global_step,
                train_loss,
                seconds,
                steps * self.batch_size * self.dist.world,
                val,
                partial,
            )
            results.append(result)
            self._log_epoch(result)
            self.save()
        if self._val is None:  # resumed after the last epoch: still produce the outputs
            self._sync_buffers()
            self._validate(features=not args.no_embeddings)
        self.finish()
        return results

    def _log_epoch(self, r: EpochResult) -> None:
        entry: dict[str, Any] = {
            "epoch": r.epoch,
            "global_step": r.global_step,
            "train_loss": round(r.train_loss, 6) if math.isfinite(r.train_loss) else None,
            "lr": float(self.scheduler.get_last_lr()[0]),
            "seconds": round(r.seconds, 2),
            "seconds_per_slice": round(r.seconds / r.slices, 5) if r.slices else None,
            "partial": r.partial,
        }
        if r.val is not None:
            entry.update({f"val_{k}": v for k, v in r.val.items()})
        self.history.append(entry)
        val = (
            f"val wlogloss {r.val['weighted_log_loss']:.4f}  "
            f"AUC(any) {r.val.get('auc_any', float('nan')):.4f}  "
            if r.val is not None
            else ""
        )
        per = f" ({1000 * r.seconds / r.slices:.0f} ms/slice)" if r.slices else ""
        part = " (part)" if r.partial else ""
        self._info(
            f"epoch {r.epoch}/{self.args.epochs}{part}  step {r.global_step}  "
            f"train loss {r.train_loss:.4f}  {val}time {r.seconds:.1f}s{per}"
        )
        if self.dist.main:
            with (self.out / "history.jsonl").open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")

    # ------------------------------------------------------------------- evaluation

    @torch.inference_mode()
    def predict(
        self, indices: np.ndarray, features: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (n, 6) float32 and, if asked, pooled features (n, d) float16 of table
        rows ``indices``, without augmentation; each rank scores every world-th row and all
        ranks get everything."""
        indices = np.asarray(indices, dtype=np.int64)
        mine = indices[self.dist.rank :: self.dist.world]
        model = self.final_model.eval()
        head = model.fc
        assert isinstance(head, nn.Linear)
        probs: list[torch.Tensor] = []
        feats: list[torch.Tensor] = []
        hook = (
            head.register_forward_hook(
                lambda _m, inp, _o: feats.append(inp[0].detach().to("cpu", torch.float16))
            )
            if features
            else None
        )
        try:
            b = 2 * self.batch_size
            batches = [list(range(i, min(i + b, len(mine)))) for i in range(0, len(mine), b)]
            for hu, _, _ in self._loader(SliceDataset(self.table, mine), batches):
                x = model_batch(hu.to(self.device, non_blocking=True), self.spec.windows)
                with self._autocast():
                    logits = model(x.contiguous(memory_format=torch.channels_last))
                probs.append(torch.sigmoid(logits.float()).cpu())
        finally:
            if hook is not None:
                hook.remove()
        dim = head.in_features
        p = torch.cat(probs) if probs else torch.zeros(0, len(LABELS))
        f = torch.cat(feats) if feats else torch.zeros(0, dim, dtype=torch.float16)
        p_all = self._gather_rows(p, len(indices)).numpy()
        f_all = self._gather_rows(f, len(indices)).numpy() if features else None
        return p_all, f_all

    def _validate(self, features: bool) -> dict[str, float] | None:
        if len(self.val_idx) == 0:
            self._val = (np.zeros((0, len(LABELS)), np.float32), None)
            return None
        probs, feats = self.predict(self.val_idx, features)
        self._val = (probs, feats)
        return validation_metrics(self.table.labels[self.val_idx], probs)

    # ------------------------------------------------------------------- outputs

    def finish(self) -> None:
        """Validation predictions, embeddings, final weights (rank 0 writes; all compute)."""
        args = self.args
        assert self._val is not None
        val_probs, val_feats = self._val
        metrics = (
            validation_metrics(self.table.labels[self.val_idx], val_probs)
            if len(self.val_idx)
            else None
        )
        identity = weights_identity(self.out.name or "run", state_digest(self.final_model))
        if self.dist.main and len(self.val_idx):
            self._write_val_predictions(val_probs, metrics, identity)
        if not args.no_embeddings:
            train_probs, train_feats = self.predict(self.train_idx, features=True)
            del train_probs
            if self.dist.main:
                self._write_embeddings(train_feats, val_feats)
        if self.dist.main and args.save_weights:
            card = save_checkpoint(
                self.final_model,
                self.spec,
                args.weights_dir,
                args.save_weights,
                self._card(metrics),
                storage_dtype=getattr(torch, args.weights_dtype),
            )
            self._info(f"weights and model card written: {card}")
        if args.digest_dir is not None:
            args.digest_dir.mkdir(parents=True, exist_ok=True)
            (args.digest_dir / f"rank{self.dist.rank}.sha256").write_text(
                f"{state_digest(self.final_model)} {self.global_step}\n"
            )
        self._barrier()

    def _write_val_predictions(
        self, probs: np.ndarray, metrics: dict[str, float] | None, identity: str
    ) -> None:
        t = self.table
        rows_by_study: dict[str, list[int]] = {}
        for k, i in enumerate(self.val_idx):
            rows_by_study.setdefault(str(t.study_ids[i]), []).append(k)
        studies = []
        for uid, ks in rows_by_study.items():
            ks.sort(key=lambda k: int(t.slice_index[self.val_idx[k]]))
            rows = self.val_idx[ks]
            p = probs[ks].astype(np.float32)
            peaks = p.argmax(axis=0)
            prediction = StudyPrediction(
                study_instance_uid=uid,
                series_instance_uid=str(t.series_ids[rows[0]]),
                weights_identity=identity,
                slices=tuple(
                    SlicePrediction(
                        index=int(t.slice_index[i]),
                        sop_instance_uid=str(t.sop_ids[i]),
                        z=float(t.z[i]),
                        probabilities=tuple(float(v) for v in row),
                    )
                    for i, row in zip(rows, p, strict=True)
                ),
                probs=p,
                study_scores={label: float(p[:, j].max()) for j, label in enumerate(LABELS)},
                peak_slice={
                    label: int(t.slice_index[rows[peaks[j]]]) for j, label in enumerate(LABELS)
                },
                seconds=0.0,
            )
            summary = prediction.to_dict()
            for entry, i in zip(summary["slices"], rows, strict=True):
                entry["target"] = {label: int(t.labels[i, j]) for j, label in enumerate(LABELS)}
            studies.append(summary)
        document = {
            "notice": NOTICE,
            "model": {
                "weights_identity": identity,
                "arch": self.spec.arch,
                "input_size": self.spec.input_size,
                "global_step": self.global_step,
            },
            "labels": list(LABELS),
            "study_score": "maximum over the validation slices of the series",
            "split": {k: v for k, v in self.split_info.items() if not k.endswith("_uids")},
            "metrics": metrics,
            "studies": studies,
        }
        path = self.out / "val_predictions.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def _write_embeddings(
        self, train_feats: np.ndarray | None, val_feats: np.ndarray | None
    ) -> None:
        t = self.table
        idx = np.concatenate([self.train_idx, self.val_idx])
        parts = [train_feats] + ([val_feats] if len(self.val_idx) else [])
        feats = np.concatenate([f for f in parts if f is not None])
        order = np.argsort(idx, kind="stable")  # table order: by study, slices along the head
        idx, feats = idx[order], feats[order]
        split = np.where(np.isin(idx, self.val_idx), "val", "train")
        path = self.out / "embeddings.npz"
        tmp = path.with_name("embeddings.tmp.npz")
        np.savez(
            tmp,
            sop_ids=t.sop_ids[idx],
            study_ids=t.study_ids[idx],
            series_ids=t.series_ids[idx],
            slice_index=t.slice_index[idx],
            z=t.z[idx],
            features=feats.astype(np.float16),
            labels=t.labels[idx],
            split=split,
        )
        os.replace(tmp, path)

    def _card(self, metrics: dict[str, float] | None) -> dict[str, Any]:
        args = self.args
        data = {
            **self.table.summary(),
            "inputs": self.inputs if len(self.inputs) <= 50 else f"{len(self.inputs)} inputs",
            "labels_file": self.labels_path.name,
            "labels_sha256": _file_sha256(self.labels_path),
        }
        if metrics is not None:
            where = (
                f"validation split ({self.split_info['description']}, "
                f"{self.split_info['val_studies']} studies, {len(self.val_idx)} slices)"
            )
            card_metrics: dict[str, dict[str, Any]] = {where: metrics}
        else:
            last = self.history[-1]["train_loss"] if self.history else None
            card_metrics = {"training data (no validation split)": {"train_loss_last_epoch": last}}
        launcher = (
            f"torchrun --nproc-per-node {self.dist.world} -m core.train"
            if self.dist.active
            else "python -m core.train"
        )
        return {
            "training_data": data,
            "split": self.split_info,
            "command": f"{launcher} {shlex.join(args.argv)}",
            "metrics": card_metrics,
            "training": {
                "epochs": args.epochs,
                "steps": self.global_step,
                "batch_size_per_process": self.batch_size,
                "processes": self.dist.world,
                "optimizer": "AdamW",
                "lr": args.lr,
                "weight_decay": args.weight_decay,
                "schedule": f"linear warmup ({args.warmup:.0%}) then cosine, per step",
                "loss": "BCE weighted as the challenge (any 2, others 1)"
                + (
                    f" + {args.map_weight} × (BCE + soft Dice) of the bleed map on slices "
                    "whose blood is known (synthetic bleeds, real slices without bleed)"
                    if self.spec.bleed_map
                    else ""
                ),
                "synthetic_bleeds": (
                    f"{args.synthetic:.0%} of the training slices without bleed were given a "
                    "synthetic bleed (core.imaging.synthesis), drawn anew each epoch"
                    if args.synthetic
                    else None
                ),
                "ema_decay": args.ema or None,
                "saved": "moving average of the weights"
                if self.ema is not None and args.final == "average"
                else "the weights at the last step",
                "ema_warmup": "min(DECAY, (1 + n) / (10 + n)) at update n" if args.ema else None,
                "augmentation": None if args.no_augment else asdict(self.augment_config),
                "init": args.init.name if args.init else "random (no pretrained weights)",
                "seed": args.seed,
                "device": self.device.type,
                "precision": self.precision,
            },
        }

    # ------------------------------------------------------------------- distributed helpers

    def _info(self, message: str) -> None:
        if self.dist.main:
            log.info(message)

    def _barrier(self) -> None:
        if self.dist.active:
            dist.barrier()

    def _sync_buffers(self) -> None:
        """BatchNorm statistics differ per rank after the last step: take rank 0's, so every
        rank evaluates and saves the same model."""
        if not self.dist.active:
            return
        for buf in self.model.buffers():
            dist.broadcast(buf, src=0)

    def _mean_across_ranks(self, loss_sum: torch.Tensor, steps: int) -> float:
        total = torch.stack(
            [loss_sum.detach().float(), torch.tensor(float(steps), device=self.device)]
        )
        if self.dist.active:
            dist.all_reduce(total)
        return float(total[0] / total[1]) if float(total[1]) > 0 else float("nan")

    def _gather_rows(self, local: torch.Tensor, n_total: int, chunk: int = 16384) -> torch.Tensor:
        """Inverse of indices[rank::world]: every rank's rows back in the original order,
        gathered in chunks so that GPU memory stays bounded."""
        if not self.dist.active:
            return local
        world = self.dist.world
        sizes = [len(range(r, n_total, world)) for r in range(world)]
        out = torch.empty((n_total, *local.shape[1:]), dtype=local.dtype)
        comm = self.device if self.cuda else torch.device("cpu")
        as_bytes = local.dtype != torch.float32  # gloo lacks fp16/int16; bytes are bytes
        for lo in range(0, max(sizes), chunk):
            hi = min(max(sizes), lo + chunk)
            part = torch.zeros((hi - lo, *local.shape[1:]), dtype=local.dtype)
            mine = local[lo:hi]
            part[: len(mine)] = mine
            send = (part.view(torch.uint8) if as_bytes else part).to(comm)
            recv = [torch.empty_like(send) for _ in range(world)]
            dist.all_gather(recv, send)
            for r in range(world):
                got = recv[r].cpu()
                got = got.view(local.dtype) if as_bytes else got
                n = max(0, min(hi, sizes[r]) - lo)
                out[r::world][lo : lo + n] = got[:n]
        return out

    def close(self) -> None:
        if self.dist.active and dist.is_initialized():
            dist.destroy_process_group()


def run(args: argparse.Namespace) -> Trainer:
    trainer = Trainer(args)
    try:
        trainer.setup()
        trainer.fit()
    finally:
        trainer.close()
    return trainer
