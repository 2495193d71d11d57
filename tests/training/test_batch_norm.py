"""core.training.batch_norm: damaged running statistics are re-estimated, the rest untouched."""

from __future__ import annotations

import pytest
import torch

from core.model.checkpoint import ModelSpec, build_model
from core.training.batch_norm import damaged_batch_norms, refresh_damaged_batch_norms


def test_only_the_damaged_layer_is_re_estimated_and_the_outputs_are_finite_again() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec("tiny", 64, bleed_map=True))
    model.train()
    data = [torch.rand(4, 3, 64, 64) for _ in range(3)]
    with torch.no_grad():
        for x in data:
            model.forward_with_map(x)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.bleed_map.fuse[1].running_var[:3] = float("nan")  # as the EMA left v4's
        model.bn1.running_var[0] = float("inf")
    assert damaged_batch_norms(model) == ["bn1", "bleed_map.fuse.1"]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.isfinite(model.forward_with_map(x)[1]).all()
    names = refresh_damaged_batch_norms(model, iter(data))
    assert names == ["bn1", "bleed_map.fuse.1"] and damaged_batch_norms(model) == []
    assert not model.training and model.bleed_map.fuse[1].momentum == 0.1  # as it was
    after = model.state_dict()
    for k, v in before.items():
        if k.startswith(("bn1.", "bleed_map.fuse.1.")):
            continue
        assert torch.equal(after[k], v), k  # every other layer exactly as trained
    # the plain average over the batches of what the layer sees (the stem's: conv1's output)
    with torch.no_grad():
        expected = torch.stack([model.conv1(x).mean(dim=(0, 2, 3)) for x in data]).mean(0)
    torch.testing.assert_close(after["bn1.running_mean"], expected)
    assert (after["bleed_map.fuse.1.running_var"] > 0).all()
    with torch.no_grad():
        logits, bleed = model.forward_with_map(x)
    assert torch.isfinite(logits).all() and torch.isfinite(bleed).all()
    assert refresh_damaged_batch_norms(model, iter([])) == []  # nothing damaged: nothing to do
    with torch.no_grad():
        model.bn1.running_mean[0] = float("nan")
    with pytest.raises(ValueError, match="no batch"):
        refresh_damaged_batch_norms(model, iter([]))
