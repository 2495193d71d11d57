"""core.training.init_weights: --init takes matching tensors, never the head, never pickle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from core.model.checkpoint import ModelSpec, build_model
from core.training.init_weights import load_init_weights


def test_init_loads_matching_tensors_and_skips_the_head(tmp_path: Path) -> None:
    torch.manual_seed(1)
    imagenet = build_model(ModelSpec("tiny", 64))
    imagenet.fc = nn.Linear(imagenet.fc.in_features, 1000)  # a torchvision/timm 1000-class head
    torch.save({f"module.{k}": v for k, v in imagenet.state_dict().items()}, tmp_path / "in.pth")
    torch.manual_seed(2)
    model = build_model(ModelSpec("tiny", 64))
    head = model.fc.weight.clone()
    report = load_init_weights(model, tmp_path / "in.pth")
    n = len(model.state_dict())
    assert (report.loaded, report.head_skipped, report.wrong_shape, report.unexpected) == (
        n - 2,
        2,
        0,
        0,
    )
    assert "initialised" in str(report)
    assert torch.equal(model.conv1.weight, imagenet.conv1.weight)
    assert torch.equal(model.layer4[0].bn2.running_var, imagenet.layer4[0].bn2.running_var)
    assert torch.equal(model.fc.weight, head)

    # timm-style wrapper and safetensors load the same way.
    torch.save({"state_dict": imagenet.state_dict()}, tmp_path / "wrapped.pth")
    assert load_init_weights(build_model(ModelSpec("tiny", 64)), tmp_path / "wrapped.pth") == report
    save_file(
        {f"model.{k}": v.contiguous() for k, v in imagenet.state_dict().items()},
        str(tmp_path / "in.safetensors"),
    )
    assert load_init_weights(build_model(ModelSpec("tiny", 64)), tmp_path / "in.safetensors") == (
        report
    )

    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="none of its 1 tensors matches"):
        load_init_weights(model, tmp_path / "other.pth")
    torch.save({"weights": _Opaque()}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="without running code"):
        load_init_weights(model, tmp_path / "pickled.pth")


class _Opaque:
    """A pickled object: loading it would need code from the file, so it is refused."""


def test_keep_head_fine_tunes_one_of_our_own_models(tmp_path: Path) -> None:
    """``--init-head``: our own checkpoint's six-output head is taken with the rest, so a
    fine-tune starts from the model as it was, not from its features under a random head."""
    torch.manual_seed(3)
    ours = build_model(ModelSpec("tiny", 64))
    state = {k: v.contiguous() for k, v in ours.state_dict().items()}
    save_file(state, str(tmp_path / "ours.safetensors"))
    torch.manual_seed(4)
    model = build_model(ModelSpec("tiny", 64))
    report = load_init_weights(model, tmp_path / "ours.safetensors", keep_head=True)
    assert report.loaded == len(model.state_dict()) and report.head_skipped == 0
    assert torch.equal(model.fc.weight, ours.fc.weight)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model.eval()(x), ours.eval()(x))
    # without it, the same file leaves the head as it was
    fresh = build_model(ModelSpec("tiny", 64))
    before = fresh.fc.weight.clone()
    assert load_init_weights(fresh, tmp_path / "ours.safetensors").head_skipped == 2
    assert torch.equal(fresh.fc.weight, before)


def test_tensors_with_nan_or_infinity_are_left_out(tmp_path: Path) -> None:
    """v3's float16 running variance read back as infinity: taken, it stays infinite through
    training and turns NaN in the EMA; left out, training re-estimates it."""
    ours = build_model(ModelSpec("tiny", 64))
    state = {k: v.clone().contiguous() for k, v in ours.state_dict().items()}
    state["bn1.running_var"][0] = float("inf")
    save_file(state, str(tmp_path / "ours.safetensors"))
    model = build_model(ModelSpec("tiny", 64))
    report = load_init_weights(model, tmp_path / "ours.safetensors", keep_head=True)
    assert report.nonfinite == 1 and "1 with NaN or infinity left out" in str(report)
    assert torch.isfinite(model.bn1.running_var).all()
    assert torch.equal(model.conv1.weight, ours.conv1.weight)
