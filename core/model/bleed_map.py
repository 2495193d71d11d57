"""The segmentation head: a bleed probability map from the classifier's own features.

Why a head on the classifier and not a second network: one forward pass gives the six
probabilities and the map, so the outline costs nothing extra and comes from the features that
decided "bleed". The head is a small feature pyramid (as in FPN / the Panoptic-FPN semantic
branch): each ResNet stage (strides 4, 8, 16, 32) is projected to a few channels, upsampled to
stride 4 and summed, then one 3×3 convolution and a 1×1 to one logit per cell. At 160 px input
that is a 40 × 40 map (one cell ≈ 6 mm on a 25 cm field of view), resized to the slice's own
grid by the engine.

``BleedMapResNet`` is a torchvision ``ResNet`` (so ``layer4[-1]`` for Grad-CAM, ``fc`` and the
state-dict names of the classifier are unchanged) with the head as ``bleed_map``; its
``forward`` still returns the logits alone, and ``forward_with_map`` returns both.

>>> import torch
>>> from torchvision.models.resnet import Bottleneck
>>> net = BleedMapResNet(Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=4)
>>> net.fc = torch.nn.Linear(net.fc.in_features, 6)
>>> logits, bleed = net.forward_with_map(torch.zeros(2, 3, 64, 64))
>>> tuple(logits.shape), tuple(bleed.shape)
((2, 6), (2, 1, 16, 16))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import core.model.tv_compat  # noqa: F401  (must precede every torchvision import)

# isort: split
from torchvision.models.resnet import ResNet

#: The map's cell size in input pixels.
MAP_STRIDE = 4
#: Channels of the pyramid's projections.
MAP_CHANNELS = 64


class BleedMapHead(nn.Module):
    """Stage features (strides 4, 8, 16, 32) → one bleed logit per stride-4 cell."""

    def __init__(self, in_channels: tuple[int, ...], channels: int = MAP_CHANNELS) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.out = nn.Conv2d(channels, 1, 1)

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        size = stages[0].shape[-2:]
        total = self.lateral[0](stages[0])
        for conv, feature in zip(self.lateral[1:], stages[1:], strict=True):
            total = total + F.interpolate(
                conv(feature), size=size, mode="bilinear", align_corners=False
            )
        return self.out(self.fuse(total))


class BleedMapResNet(ResNet):
    """A torchvision ResNet/ResNeXt with the bleed-map head (``bleed_map``)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        widths = tuple(
            layer[-1].conv3.out_channels  # Bottleneck blocks
            for layer in (self.layer1, self.layer2, self.layer3, self.layer4)
        )
        self.bleed_map = BleedMapHead(widths)

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            out.append(x)
        return out

    def forward(
        self, x: torch.Tensor, with_map: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, S, S) → logits (n, labels), as any ResNet; with ``with_map`` also the
        bleed-map logits (n, 1, S/4, S/4). A flag rather than a second method so that
        DistributedDataParallel, which wraps ``forward`` only, trains the head too."""
        stages = self._stages(x)
        logits = self.fc(torch.flatten(self.avgpool(stages[-1]), 1))
        if not with_map:
            return logits
        return logits, self.bleed_map(stages)

    def forward_with_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and bleed-map logits (see ``forward``)."""
        logits, bleed = self.forward(x, with_map=True)
        return logits, bleed


def has_bleed_map(model: nn.Module) -> bool:
    """Whether ``model`` gives a bleed map (``forward_with_map``)."""
    return isinstance(model, BleedMapResNet)


def map_targets(mask: torch.Tensor, stride: int = MAP_STRIDE) -> torch.Tensor:
    """Pixel masks (n, 1, S, S) in [0, 1] → the head's targets: the blood fraction of each
    stride × stride cell (soft at the edges, as the resized map is)."""
    return F.avg_pool2d(mask.float(), stride)


def map_loss(map_logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice over the slices whose mask is known (``known``,
    bool (n,)): synthetic bleeds and real slices without blood. A real bleeding slice has no
    outline and teaches the map nothing. Dice is taken over the batch's known slices as one
    volume, so a batch whose known slices hold no blood adds only the cross-entropy.
    """
    if not bool(known.any()):
        return map_logits.sum() * 0.0
    logits = map_logits[known].float()
    t = target[known].float()
    bce = F.binary_cross_entropy_with_logits(logits, t)
    if float(t.sum()) <= 0.0:
        return bce
    p = torch.sigmoid(logits)
    dice = 1.0 - (2.0 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
    return bce + dice
