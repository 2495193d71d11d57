"""Whether bf16 autocast makes a training step faster on this CPU: measured, not only read from
the flags.

Why a probe on top of the flags: the flags say whether bf16 units exist, not whether torch's
kernels for this network's layers (grouped convolutions, forward and backward) use them well.
On a Xeon with AMX a ResNeXt-101 training step took 59 ms/slice under bf16 autocast against
114 in fp32; on an AVX2-only AMD EPYC (2026-12-06, load 1.5) the same step took 5.7 s/slice in
bf16 against 0.35 s in fp32 (the flags already say "no bf16" there, and no probe runs). A CPU
whose flags promise bf16 but whose kernels are slow would lose that much: one small bottleneck
block of the network's own kind (1×1, grouped 3×3, 1×1 with batch norm) is timed forward and
backward in both precisions, for about half a second, and bf16 is used only where it wins
clearly.

The block and its input are at the scale of the network's first stage at 160 px (256 channels,
40 × 40, batch 8): on a Zen 5 EPYC with avx512_bf16 and no AMX (2026-12-07, load 0.7) a toy
block (64 channels, 32 × 32, batch 4) timed mostly call overhead and said "fp32" on two of three
runs (6 ms vs 24, 5 vs 4), while the whole network's step took 110 ms/slice in fp32 and 58 in
bf16. Repeats are interleaved so that a burst of other work hits both precisions alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

#: bf16 must be this much faster than fp32 to be chosen (timings of a shared CPU jitter).
MARGIN = 1.2


@dataclass(frozen=True)
class PrecisionProbe:
    """Best seconds of one forward+backward of the probe block in each precision."""

    fp32_s: float
    bf16_s: float

    @property
    def bf16_faster(self) -> bool:
        return self.bf16_s * MARGIN < self.fp32_s

    def describe(self) -> str:
        return f"probe step fp32 {self.fp32_s * 1e3:.0f} ms, bf16 {self.bf16_s * 1e3:.0f} ms"


def _step(block: nn.Module, x: torch.Tensor, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = block(x).float().square().mean()
    loss.backward()
    return time.perf_counter() - start


def probe_cpu_bf16(repeats: int = 2) -> PrecisionProbe:
    """Time the probe block on the CPU; a bf16 step slower than 10× fp32 ends the probe early."""
    gen = torch.Generator().manual_seed(0)
    block: nn.Module = nn.Sequential(
        nn.Conv2d(256, 128, 1, bias=False),
        nn.BatchNorm2d(128),
        nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1, groups=32, bias=False),
        nn.BatchNorm2d(128),
        nn.ReLU(),
        nn.Conv2d(128, 256, 1, bias=False),
    )
    block.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = torch.randn(8, 256, 40, 40, generator=gen).contiguous(memory_format=torch.channels_last)
    # Warm-up: the first calls in each precision create their kernels.
    _step(block, x, False)
    fp32 = float("inf")
    bf16 = _step(block, x, True)
    if bf16 > 10 * _step(block, x, False):  # no usable bf16 kernels: stop at once
        return PrecisionProbe(fp32_s=_step(block, x, False), bf16_s=bf16)
    bf16 = float("inf")
    for _ in range(repeats + 1):  # interleaved: jitter from other work hits both
        fp32 = min(fp32, _step(block, x, False))
        bf16 = min(bf16, _step(block, x, True))
    return PrecisionProbe(fp32_s=fp32, bf16_s=bf16)
