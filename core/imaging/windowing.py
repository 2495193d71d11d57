"""CT windows (level/width in HU): display images and the 3-channel model input.

A window maps HU in [level - width/2, level + width/2] linearly onto black..white. The model
input stacks three windows as channels, as the RSNA 2019 top solutions did, so the network sees
blood against brain, thin collections against bone, and the skull itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Window:
    """A display window: ``level`` (centre) and ``width``, both in Hounsfield units."""

    name: str
    level: float
    width: float

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"window width must be positive, got {self.width}")

    @property
    def low(self) -> float:
        return self.level - self.width / 2

    @property
    def high(self) -> float:
        return self.level + self.width / 2


BRAIN = Window("brain", 40, 80)
SUBDURAL = Window("subdural", 80, 200)
STROKE = Window("stroke", 40, 40)
BONE = Window("bone", 600, 2800)
SOFT_TISSUE = Window("soft tissue", 40, 380)
#: Acute blood (about 50–80 HU) against grey and white matter (25–45 HU).
BLOOD = Window("blood", 60, 40)

#: Named presets in the order the viewer lists them.
PRESETS: dict[str, Window] = {w.name: w for w in (BRAIN, SUBDURAL, STROKE, BONE, SOFT_TISSUE)}

#: Default channels of the model input (a checkpoint stores its own and overrides this). All
#: three lie inside 0–80 HU, because the large training set (rsna_png) holds only that range:
#: a window reaching past it would show the model values it never saw in training.
MODEL_WINDOWS: tuple[Window, ...] = (BRAIN, STROKE, BLOOD)


def window_span(windows: tuple[Window, ...]) -> tuple[float, float]:
    """(lowest low, highest high) of ``windows``: the HU range the model input can tell apart.

    >>> window_span(MODEL_WINDOWS)
    (0.0, 80.0)
    """
    return float(min(w.low for w in windows)), float(max(w.high for w in windows))


def window_by_name(name: str) -> Window:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown window {name!r}; known: {', '.join(PRESETS)}") from None


def apply_window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """HU array of any shape → uint8 of the same shape (0 below the window, 255 above).

    >>> apply_window(np.array([-1000, 40, 1000]), 40, 80).tolist()
    [0, 128, 255]
    """
    if not width > 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = level - width / 2
    scaled = (np.asarray(hu, dtype=np.float32) - np.float32(low)) * np.float32(255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def model_input(
    hu: np.ndarray | torch.Tensor,
    size: int,
    windows: tuple[Window, ...] = MODEL_WINDOWS,
) -> torch.Tensor:
    """Slices of HU (n, rows, cols) → float32 tensor (n, len(windows), size, size) in [0, 1].

    The HU stack is first clipped to the span the windows cover (nothing outside it reaches
    the model anyway), then resized once (bilinear, antialiased) and windowed per channel, all
    vectorised over the slices: one interpolation instead of one per window. Clipping before the
    resize means bone at +1000 HU does not bleed into the brain pixels beside it when 512 px
    shrink to 160, so a DICOM slice gives the model the same pixels as the same slice stored
    in a 0–80 HU brain-window PNG (the training data).

    >>> model_input(np.full((2, 64, 64), 40, np.int16), 32).shape
    torch.Size([2, 3, 32, 32])
    """
    if isinstance(hu, np.ndarray):  # the HU stack is read-only: convert, never alias it
        x = torch.from_numpy(
            hu.astype(np.float32, copy=hu.dtype != np.float32 or not hu.flags.writeable)
        )
    else:
        x = hu
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected (slices, rows, cols), got shape {tuple(x.shape)}")
    x = x.to(torch.float32)[:, None].clamp(*window_span(windows))
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    low = torch.tensor([w.low for w in windows], dtype=torch.float32).view(1, -1, 1, 1)
    width = torch.tensor([w.width for w in windows], dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - low) / width).clamp_(0.0, 1.0)
