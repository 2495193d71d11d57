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

The loop is here; around it: ``objective`` (loss, schedule, moving average, validation
figures), ``checkpointing`` (the resume point and the settings it fixes), ``distributed``
(torchrun ranks and their collectives), ``init_weights`` (``--init``) and ``synthetic`` (bleeds
painted into normal slices for ``--synthetic``).

Outputs in ``--out``: ``last.pt`` (resume point), ``history.jsonl`` (one line per epoch),
``val_predictions.json`` (the layout of ``core.predict --json``, written by the same
core.inference.prediction_json, plus each slice's target), ``embeddings.npz`` (pooled CNN
features of every slice, for the slice-context model).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from core.imaging.windowing import window_span
from core.inference.prediction_json import prediction_document, write_prediction_json
from core.inference.predictor import (
    SlicePrediction,
    StudyPrediction,
    cpu_has_bf16,
    keep_large_buffers,
    usable_cpus,
)
from core.labels import LABELS
from core.model.bleed_map import map_loss, map_targets
from core.model.checkpoint import (
    ModelSpec,
    build_model,
    save_checkpoint,
    weights_identity,
)
from core.training.batch_norm import damaged_batch_norms, refresh_damaged_batch_norms
from core.training.checkpointing import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    atomic_save,
    changed_settings,
    file_sha256,
    plain,
    rng_state,
    seed_everything,
    set_rng_state,
    state_digest,
    step_seed,
)
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
from core.training.distributed import (
    barrier,
    gather_rows,
    init_distributed,
    mean_across_ranks,
    sync_buffers,
)
from core.training.init_weights import InitReport, load_init_weights
from core.training.objective import (
    ema_with_warmup,
    lr_factor,
    validation_metrics,
    weighted_bce,
)
from core.training.precision import probe_cpu_bf16
from core.training.synthetic import SyntheticBleedSlices

log = logging.getLogger("core.training.trainer")

DEFAULT_FOLDS = 5
#: Training batches that re-estimate batch-norm statistics found not finite at the end.
REPAIR_BATCHES = 32

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
        self.history: list[dict[str, float | None]] = []  # one per epoch, as history.jsonl
        self.init_report: InitReport | None = None
        self._val: tuple[np.ndarray, np.ndarray | None] | None = None  # last (probs, features)
        if self.cuda:
            amp = args.amp
            if amp == "auto":
                amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
            torch.backends.cudnn.benchmark = True
        else:
            # bf16 only where it makes a step faster here (measured: core.training.precision);
            # on CPUs without AMX it was 16-100x slower, avx512_bf16 or not.
            amp = args.amp
            if amp == "auto":
                amp = "off"
                if cpu_has_bf16():
                    probe = probe_cpu_bf16()
                    amp = "bf16" if probe.bf16_faster else "off"
                    log.info(
                        "bf16 units found; %s: training in %s",
                        probe.describe(),
                        "bf16" if amp == "bf16" else "fp32",
                    )
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
        seed_everything(args.seed)
        self.labels_path: Path = args.labels
        labels = read_challenge_labels(args.labels)
        self.table = self._load_table(labels)
        self._split()
        model = build_model(self.spec)
        if args.init is not None:
            self.init_report = load_init_weights(
                model, args.init, keep_head=bool(getattr(args, "init_head", False))
            )
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
        self.sampler: DistributedSampler[int] = DistributedSampler(
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
        barrier(self.dist)
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
        rec = {k: plain(v) for k, v in vars(self.args).items()}
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
            "rng": rng_state(),
            "args": self._args_record(),
            "history": self.history,
        }

    def save(self) -> Path:
        path = self.out / CHECKPOINT_NAME
        if self.dist.main:
            atomic_save(self.checkpoint_state(), path)
        barrier(self.dist)
        return path

    def resume(self, path: Path) -> None:
        if not path.is_file():
            raise ValueError(f"--resume: there is no checkpoint {path} to continue from")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"--resume: {path} is not a checkpoint of this trainer")
        saved, now = state["args"], self._args_record()
        changed = changed_settings(saved, now)
        if changed:
            raise ValueError(
                "--resume must keep the settings of the run it continues; changed: "
                + ", ".join(changed)
            )
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.history = list(state["history"])
        self._info(
            f"resumed from {path.name} at step {self.global_step} (epoch {self.epoch + 1}, "
            f"step {self.step_in_epoch} of {self.steps_per_epoch})"
        )

    # ------------------------------------------------------------------- training

    def _autocast(self) -> AbstractContextManager[object]:
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
                step_seed(self.args.seed, self.global_step, self.dist.rank)
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
            sync_buffers(self.dist, self.model)
            if final:
                self._repair_statistics(train_set)
            train_loss = mean_across_ranks(self.dist, self.device, loss_sum, steps)
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
            sync_buffers(self.dist, self.model)
            self._repair_statistics(train_set)
            self._validate(features=not args.no_embeddings)
        self.finish()
        return results

    def _repair_statistics(self, train_set: SliceDataset | SyntheticBleedSlices) -> None:
        """Before the final validation: batch-norm layers whose running statistics are not
        finite (inherited from an --init whose float16 variance overflowed, then averaged into
        NaN by the EMA) are re-estimated on REPAIR_BATCHES training batches, without
        augmentation (core.training.batch_norm); every other layer is left as trained."""
        raw = getattr(self.model, "module", self.model)
        for model in dict.fromkeys([self.final_model, raw]):  # the same module once
            if not damaged_batch_norms(model):
                continue
            order = self._batches(max(self.epoch - 1, 0))[:REPAIR_BATCHES]
            batches = (
                model_batch(hu.to(self.device), self.spec.windows).contiguous(
                    memory_format=torch.channels_last
                )
                for hu, *_ in self._loader(train_set, order)
            )
            names = refresh_damaged_batch_norms(model, batches)
            self._info(
                f"re-estimated the batch-norm statistics of {', '.join(names)} on "
                f"{len(order)} training batches: they held NaN or infinity"
            )

    def _log_epoch(self, r: EpochResult) -> None:
        entry: dict[str, float | None] = {
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
        p_all = gather_rows(self.dist, self.device, p, len(indices)).numpy()
        f_all = gather_rows(self.dist, self.device, f, len(indices)).numpy() if features else None
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
        barrier(self.dist)

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
        document = prediction_document(
            {
                "weights_identity": identity,
                "arch": self.spec.arch,
                "input_size": self.spec.input_size,
                "global_step": self.global_step,
            },
            "maximum over the validation slices of the series",
            studies,
            evaluation={
                "split": {k: v for k, v in self.split_info.items() if not k.endswith("_uids")},
                "metrics": metrics,
            },
        )
        write_prediction_json(self.out / "val_predictions.json", document, indent=1)

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
            "labels_sha256": file_sha256(self.labels_path),
        }
        if metrics is not None:
            where = (
                f"validation split ({self.split_info['description']}, "
                f"{self.split_info['val_studies']} studies, {len(self.val_idx)} slices)"
            )
            card_metrics: dict[str, Mapping[str, float | None]] = {where: metrics}
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
                "init": (
                    f"{args.init.name}"
                    + (" (classifier head included)" if getattr(args, "init_head", False) else "")
                    if args.init
                    else "random (no pretrained weights)"
                ),
                "seed": args.seed,
                "device": self.device.type,
                "precision": self.precision,
            },
        }

    # ------------------------------------------------------------------- distributed helpers

    def _info(self, message: str) -> None:
        if self.dist.main:
            log.info(message)

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
