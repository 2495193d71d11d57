"""Slice-context model: a small bidirectional GRU over one study's slices, in patient-axis order.

Why: a radiologist reads a slice with its neighbours; a slice CNN does not. A bleed spans
adjacent slices, while the CNN's typical false positives sit at the skull base and the vertex
where bone meets brain. The GRU sees, per slice, the CNN's six logits and the slice's relative
position along the head, and gives refined per-slice probabilities and a study-level score.

Why logits and not the CNN's 2048-d pooled features: with 16 studies the context model must be
trained on out-of-fold CNN outputs (each study scored by a CNN that never saw it), and those
come from several separately trained CNNs whose feature spaces are not aligned, while their
logits mean the same thing. The shipped CNN's logits on a new study are out-of-sample too, so
training and use see the same kind of input (stacking).

The refined slice logits are the CNN's plus a learned correction that starts at zero, so an
untrained or weakly trained context model falls back to the CNN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.labels import LABELS, LOSS_WEIGHTS

N_LABELS = len(LABELS)


@dataclass(frozen=True)
class ContextSpec:
    hidden: int = 16

    def to_dict(self) -> dict[str, int]:
        return {"hidden": self.hidden}

    def __post_init__(self) -> None:
        if not 1 <= self.hidden <= 1024:
            raise ValueError(f"hidden size must be 1..1024, got {self.hidden}")

    @classmethod
    def from_dict(cls, data: dict) -> ContextSpec:
        return cls(hidden=int(data["hidden"]))


class SliceContext(nn.Module):
    """(B, T, 6) CNN logits + (B, T) positions in [0, 1] → refined (B, T, 6) logits and a
    (B,) study logit for 'any'. Padding slices are excluded with ``mask`` (B, T) bool."""

    def __init__(self, spec: ContextSpec = ContextSpec()) -> None:
        super().__init__()
        h = spec.hidden
        self.spec = spec
        self.inp = nn.Linear(N_LABELS + 2, h)
        self.gru = nn.GRU(h, h, batch_first=True, bidirectional=True)
        self.delta = nn.Linear(2 * h, N_LABELS)
        self.study = nn.Linear(2 * h + 1, 1)
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.delta.bias)

    def forward(
        self, logits: torch.Tensor, position: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if mask is None:
            mask = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
        # position and its distance from the middle: the ends of the head behave alike
        feats = torch.cat(
            [logits, position[..., None], (2 * position[..., None] - 1).abs()], dim=-1
        )
        hidden, _ = self.gru(torch.tanh(self.inp(feats)))
        refined = logits + self.delta(hidden)
        neg = torch.finfo(refined.dtype).min
        pooled = hidden.masked_fill(~mask[..., None], neg).amax(dim=1)
        top_any = refined[..., 0].masked_fill(~mask, neg).amax(dim=1, keepdim=True)
        study = self.study(torch.cat([pooled, top_any], dim=-1))[:, 0] + top_any[:, 0]
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
        pos[i, :n] = torch.from_numpy(positions(n))
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
