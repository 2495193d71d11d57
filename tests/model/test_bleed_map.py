"""core.model.bleed_map: the segmentation head beside the classifier, its targets and loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.model.bleed_map import BleedMapResNet, has_bleed_map, map_loss, map_targets
from core.model.checkpoint import ModelSpec, build_model, load_checkpoint, save_checkpoint

SPEC = ModelSpec("tiny", 64, bleed_map=True)


def test_forward_gives_the_logits_and_the_map_from_one_pass() -> None:
    torch.manual_seed(0)
    net = build_model(SPEC).eval()
    assert isinstance(net, BleedMapResNet) and has_bleed_map(net)
    assert not has_bleed_map(build_model(ModelSpec("tiny", 64)))
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        logits, bleed = net.forward_with_map(x)
        plain = net(x)
    assert logits.shape == (3, 6) and bleed.shape == (3, 1, 16, 16)
    torch.testing.assert_close(plain, logits)  # the head changes nothing of the classifier


def test_classifier_tensors_keep_their_names() -> None:
    """Grad-CAM, --init and the checkpoint code find the classifier where a ResNet has it."""
    with_map = set(build_model(SPEC).state_dict())
    plain = set(build_model(ModelSpec("tiny", 64)).state_dict())
    assert plain < with_map
    assert all(k.startswith("bleed_map.") for k in with_map - plain)


def test_map_targets_are_blood_fractions_per_cell() -> None:
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, :4, :2] = 1.0  # half of the top-left 4×4 cell
    t = map_targets(mask)
    assert t.shape == (1, 1, 2, 2)
    assert t[0, 0, 0, 0] == pytest.approx(0.5) and float(t[0, 0, 1:, :].sum()) == 0.0


def test_map_loss_counts_only_slices_with_a_known_mask() -> None:
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, 1:3, 1:3] = 1.0
    logits = torch.zeros(2, 1, 4, 4, requires_grad=True)
    loss = map_loss(logits, target, torch.tensor([True, False]))
    loss.backward()
    assert logits.grad is not None
    assert float(logits.grad[1].abs().sum()) == 0.0 and float(logits.grad[0].abs().sum()) > 0
    none = map_loss(logits, target, torch.tensor([False, False]))
    assert float(none.detach()) == 0.0
    # A perfect map scores lower than an empty one.
    good = map_loss((target * 2 - 1) * 10, target, torch.tensor([True, True]))
    assert float(good) < float(
        map_loss(torch.full_like(target, -10.0), target, torch.ones(2, dtype=torch.bool))
    )


def test_checkpoint_with_the_head_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = build_model(SPEC).eval()
    card = save_checkpoint(net, SPEC, tmp_path, "with-map")
    loaded = load_checkpoint(card, allow_unverified=True)
    assert loaded.spec.bleed_map and loaded.card.bleed_map == {"stride": 4}
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(net.forward_with_map(x), loaded.model.forward_with_map(x), strict=True):
            torch.testing.assert_close(a, b)
