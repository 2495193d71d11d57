"""core.training.objective: the challenge's loss, the schedule and the moving average."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from core.training.metrics import weighted_log_loss
from core.training.objective import ema_with_warmup, lr_factor, weighted_bce


def test_loss_is_the_challenge_metric_and_the_schedule_warms_up_then_decays() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((32, 6)) < 0.3).astype(np.float32)
    p = rng.uniform(0.02, 0.98, (32, 6))
    logits = torch.from_numpy(np.log(p / (1 - p)))
    assert float(weighted_bce(logits, torch.from_numpy(y))) == pytest.approx(
        weighted_log_loss(y, p), rel=1e-5
    )
    factors = [lr_factor(s, 100, 10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))
    assert factors[-1] < 0.01


def test_moving_average_warms_up_instead_of_keeping_the_initial_weights() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = AveragedModel(net, multi_avg_fn=ema_with_warmup(0.998), use_buffers=True)
    start = net[0].weight.detach().clone()
    ema.update_parameters(net)  # the first update copies
    for n in range(1, 4):
        with torch.no_grad():
            net[0].weight.add_(1.0)
        net(torch.randn(4, 3))  # BatchNorm counters move too
        before = ema.module[0].weight.detach().clone()
        ema.update_parameters(net)
        d = min(0.998, (1 + n) / (10 + n))
        expected = d * before + (1 - d) * net[0].weight.detach()
        torch.testing.assert_close(ema.module[0].weight, expected)
    # After three updates a constant 0.998 would still sit at the start; this one has moved.
    assert float((ema.module[0].weight.detach() - start).mean()) > 1.5
    assert int(ema.module[1].num_batches_tracked) == int(net[1].num_batches_tracked)
