"""Slice-context model: a small 1-D convolution over one study's slices, in patient-axis order.

Why: a radiologist reads a slice with its neighbours; a slice CNN does not. A bleed spans
adjacent slices, and where along the head a slice lies changes how likely a finding is. Per
label, the model smooths the CNN's logits over neighbouring slices (a learned kernel of
non-negative weights), scales them by a non-negative gain and adds a learned prior over the
slice's relative position; the study's 'any' score is a non-negative gain times the highest
refined 'any' logit, plus a bias.

Why monotone: every output is non-decreasing in every CNN logit, so the context model may
smooth, re-weight and add what position says, but it can never turn the CNN's evidence around.
With few studies an unconstrained sequence model (a bidirectional GRU was tried first) learns
whatever separates its training folds, including "a high CNN score means no bleed" when the
out-of-fold CNN happens to rank worse than chance; that is an artefact, not context.

Why logits and not the CNN's 2048-d pooled features: with 16 studies the context model must be
trained on out-of-fold CNN outputs (each study scored by a CNN that never saw it), and those
come from several separately trained CNNs whose feature spaces are not aligned, while their
logits mean the same thing. The shipped CNN's logits on a new study are out-of-sample too, so
training and use see the same kind of input (stacking).

Initialised close to the identity (centre weight 0.99, gain 1, no position term), so an
untrained context model returns about the CNN's probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.labels import LABELS, LOSS_WEIGHTS

N_LABELS = len(LABELS)
_CENTRE_INIT = 6.0  # softmax logit of the kernel's centre at start: weight ≈ 0.99


@dataclass(frozen=True)
class ContextSpec:
    hidden: int = 8  # width of the position prior's hidden layer
    kernel: int = 5  # slices seen by each refined slice (odd)

    def __post_init__(self) -> None:
        if not 1 <= self.hidden <= 1024:
            raise ValueError(f"hidden size must be 1..1024, got {self.hidden}")
        if self.kernel < 1 or self.kernel % 2 == 0 or self.kernel > 63:
            raise ValueError(f"kernel must be an odd number of slices 1..63, got {self.kernel}")

    def to_dict(self) -> dict[str, int | str]:
        return {"kind": "monotone 1-D convolution", "hidden": self.hidden, "kernel": self.kernel}

    @classmethod
    def from_dict(cls, data: dict) -> ContextSpec:
        kind = data.get("kind", "monotone 1-D convolution")
        if kind != "monotone 1-D convolution":
            raise ValueError(f"unknown context model kind {kind!r}")
        return cls(hidden=int(data["hidden"]), kernel=int(data.get("kernel", 5)))


def _softplus_inv(y: float) -> float:
    return float(np.log(np.expm1(y)))


class SliceContext(nn.Module):
    """(B, T, 6) CNN logits + (B, T) positions in [0, 1] → refined (B, T, 6) logits and a
    (B,) study logit for 'any'. Padding slices are excluded with ``mask`` (B, T) bool; their
    logits should repeat the last real slice's (``_batch`` does), so the ends are not diluted."""

    def __init__(self, spec: ContextSpec = ContextSpec()) -> None:
        super().__init__()
        self.spec = spec
        kernel = torch.zeros(N_LABELS, spec.kernel)
        kernel[:, spec.kernel // 2] = _CENTRE_INIT
        self.kernel_logits = nn.Parameter(kernel)
        self.gain_raw = nn.Parameter(torch.full((N_LABELS,), _softplus_inv(1.0)))
        self.position = nn.Sequential(
            nn.Linear(2, spec.hidden), nn.Tanh(), nn.Linear(spec.hidden, N_LABELS)
        )
        last = self.position[2]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.study_gain_raw = nn.Parameter(torch.tensor(_softplus_inv(1.0)))
        self.study_bias = nn.Parameter(torch.zeros(()))

    def forward(
        self, logits: torch.Tensor, position: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if mask is None:
            mask = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
        half = self.spec.kernel // 2
        x = logits.transpose(1, 2)  # (B, 6, T)
        if half:
            x = F.pad(x, (half, half), mode="replicate")
        weights = torch.softmax(self.kernel_logits, dim=-1)[:, None, :]  # (6, 1, k), ≥ 0
        smoothed = F.conv1d(x, weights, groups=N_LABELS).transpose(1, 2)  # (B, T, 6)
        where = torch.stack([position, (2 * position - 1).abs()], dim=-1)
        refined = F.softplus(self.gain_raw) * smoothed + self.position(where)
        neg = torch.finfo(refined.dtype).min
        top_any = refined[..., 0].masked_fill(~mask, neg).amax(dim=1)
        study = F.softplus(self.study_gain_raw) * top_any + self.study_bias
        return refined, study


def positions(n: int) -> np.ndarray:
    """Relative position of each slice along the head: 0 (first) … 1 (last)."""
    return np.linspace(0.0, 1.0, n, dtype=np.float32) if n > 1 else np.full(1, 0.5, np.float32)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p)).astype(np.float32)


@dataclass(frozen=True)
class StudyExample:
    """One study for training: CNN probabilities (T, 6) and labels (T, 6), slices in order."""

    probs: np.ndarray
    labels: np.ndarray


def _batch(studies: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = max(len(s) for s in studies)
    logits = torch.zeros(len(studies), t, N_LABELS)
    pos = torch.zeros(len(studies), t)
    mask = torch.zeros(len(studies), t, dtype=torch.bool)
    for i, probs in enumerate(studies):
        n = len(probs)
        logits[i, :n] = torch.from_numpy(_logit(probs))
        logits[i, n:] = logits[i, n - 1]  # padding repeats the last slice (see SliceContext)
        pos[i, :n] = torch.from_numpy(positions(n))
        pos[i, n:] = 1.0
        mask[i, :n] = True
    return logits, pos, mask


def fit_context(
    examples: list[StudyExample],
    spec: ContextSpec = ContextSpec(),
    epochs: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-2,
    seed: int = 0,
) -> SliceContext:
    """Train on whole studies (full batch: there are few). Loss: the challenge's weighted BCE
    on refined slice logits plus BCE of the study logit against 'any slice positive'."""
    torch.manual_seed(seed)
    model = SliceContext(spec)
    logits, pos, mask = _batch([e.probs for e in examples])
    y = torch.zeros(logits.shape)
    for i, e in enumerate(examples):
        y[i, : len(e.labels)] = torch.from_numpy(np.asarray(e.labels, dtype=np.float32))
    y_study = y[..., 0].amax(dim=1)
    w = torch.tensor(LOSS_WEIGHTS) / sum(LOSS_WEIGHTS)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        refined, study = model(logits, pos, mask)
        per = F.binary_cross_entropy_with_logits(refined, y, reduction="none")
        slice_loss = ((per * w).sum(-1) * mask).sum() / mask.sum()
        study_loss = F.binary_cross_entropy_with_logits(study, y_study)
        loss = slice_loss + study_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.inference_mode()
def apply_context(model: SliceContext, probs: np.ndarray) -> tuple[np.ndarray, float]:
    """One study's CNN probabilities (T, 6) → refined probabilities (T, 6) and P(any) study."""
    logits, pos, mask = _batch([np.asarray(probs)])
    refined, study = model(logits, pos, mask)
    return torch.sigmoid(refined[0]).numpy().astype(np.float32), float(torch.sigmoid(study[0]))
