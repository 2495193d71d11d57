"""Re-estimate the running statistics of batch-norm layers whose statistics are not finite.

Why: a running variance that once overflowed (v3's bleed-map head stored one above float16's
65504, read back as infinity) stays infinite under the running average, and a moving average of
the weights (EMA) turns it into NaN. Training itself never notices (batch norm normalises with
each batch's own statistics), but the saved model would compute NaN in those channels. The
cure is the one SWA uses (``torch.optim.swa_utils.update_bn``): run training batches through
the model and take the plain average of their statistics, here only for the damaged layers, so
that every other layer keeps exactly what training gave it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def damaged_batch_norms(model: nn.Module) -> list[str]:
    """Names of the batch-norm layers whose running mean or variance holds NaN or infinity."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            assert m.running_mean is not None and m.running_var is not None
            if not (m.running_mean.isfinite().all() and m.running_var.isfinite().all()):
                out.append(name)
    return out


@torch.no_grad()
def refresh_damaged_batch_norms(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[str]:
    """Recompute the statistics of the damaged layers (``damaged_batch_norms``) as the plain
    average over ``batches`` (model-ready inputs), every other layer in eval mode and
    untouched; return the names repaired. ``model`` is left in eval mode. Raises ValueError
    when no batch was given or a layer is still not finite (its input is)."""
    names = damaged_batch_norms(model)
    if not names:
        return []
    modules = dict(model.named_modules())
    model.eval()
    momenta = {}
    for name in names:
        m = modules[name]
        assert isinstance(m, _BatchNorm)
        momenta[name] = m.momentum
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches, as update_bn
        m.train()
    forward = getattr(model, "forward_with_map", model)  # through the bleed-map head too
    seen = 0
    try:
        for x in batches:
            forward(x)
            seen += 1
    finally:
        for name in names:
            modules[name].momentum = momenta[name]
            modules[name].eval()
    if seen == 0:
        raise ValueError("no batch to re-estimate batch-norm statistics from")
    still = damaged_batch_norms(model)
    if still:
        raise ValueError(f"batch-norm statistics still not finite after re-estimation: {still}")
    return names
