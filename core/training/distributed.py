"""Several processes under torchrun: who is who, and the few collective operations training
needs (barrier, BatchNorm buffers from rank 0, mean loss, rows gathered back in order).

Why apart from the loop: on one process every function here is a no-op, so the loop reads
the same for one CPU and for N GPUs, and this is the only module that speaks to
``torch.distributed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


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


def barrier(info: DistInfo) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if info.active:
        dist.barrier()


def sync_buffers(info: DistInfo, model: nn.Module) -> None:
    """BatchNorm statistics differ per rank after the last step: take rank 0's, so every
    rank evaluates and saves the same model."""
    if not info.active:
        return
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def mean_across_ranks(
    info: DistInfo, device: torch.device, loss_sum: torch.Tensor, steps: int
) -> float:
    """The mean loss over every rank's steps."""
    total = torch.stack([loss_sum.detach().float(), torch.tensor(float(steps), device=device)])
    if info.active:
        dist.all_reduce(total)
    return float(total[0] / total[1]) if float(total[1]) > 0 else float("nan")


def gather_rows(
    info: DistInfo, device: torch.device, local: torch.Tensor, n_total: int, chunk: int = 16384
) -> torch.Tensor:
    """Inverse of indices[rank::world]: every rank's rows back in the original order,
    gathered in chunks so that GPU memory stays bounded."""
    if not info.active:
        return local
    world = info.world
    sizes = [len(range(r, n_total, world)) for r in range(world)]
    out = torch.empty((n_total, *local.shape[1:]), dtype=local.dtype)
    comm = device if device.type == "cuda" else torch.device("cpu")
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
