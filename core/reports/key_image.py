"""The key slice as the reports show it: brain window, Grad-CAM overlay, bleed outline.

Why one composer: the PDF (core.reports.pdf) shows the key slice twice, outlined and with the
heatmap; the Secondary Capture (core.reports.secondary_capture) burns both into one image.
Composed here once, the two cannot disagree on the window, the heatmap's opacity or which
pixels the outline covers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.imaging.volume import BleedEstimate, draw_outline
from core.imaging.windowing import BRAIN, apply_window
from core.model.gradcam import Heatmap, render_overlay

#: How strongly the Grad-CAM colours cover the slice where the map is 1 (render_overlay).
OVERLAY_OPACITY = 0.5


@dataclass(frozen=True, eq=False)
class KeyImage:
    """One slice's pictures (uint8) for the reports. Compared by identity (arrays)."""

    index: int  # series index of the slice
    plain: np.ndarray  # (rows, cols) grey, brain window
    overlay: np.ndarray | None  # (rows, cols, 3) RGB with the heatmap; None without one
    outline: np.ndarray | None  # (rows, cols) bool, the bleed mask; None when none is drawn

    @property
    def outlined(self) -> bool:
        """Whether the slice has a bleed outline to draw."""
        return self.outline is not None

    def marked(self) -> np.ndarray:
        """The PDF's first panel: the outline on the brain window (RGB), or the plain grey
        slice when nothing is outlined on it."""
        if self.outline is None:
            return self.plain
        return draw_outline(self.plain, self.outline)

    def composite(self) -> np.ndarray:
        """The Secondary Capture's one image: the heatmap overlay (else the brain window as
        grey RGB) with the outline on top, C-contiguous RGB."""
        rgb = (
            self.overlay
            if self.overlay is not None
            else np.repeat(self.plain[..., None], 3, axis=-1)
        )
        if self.outline is not None:
            rgb = draw_outline(rgb, self.outline)
        return np.ascontiguousarray(rgb, dtype=np.uint8)


def compose_key_image(
    hu: np.ndarray, index: int, heatmap: Heatmap | None, estimate: BleedEstimate | None
) -> KeyImage:
    """Slice ``index`` of the series' HU stack ``hu`` (slices, rows, cols) with ``heatmap``
    (on that slice's grid) and the slice's part of ``estimate``'s mask, if it has any."""
    hu_slice = hu[index]
    mask = estimate.mask[index] if estimate is not None else None
    return KeyImage(
        index=index,
        plain=apply_window(hu_slice, BRAIN.level, BRAIN.width),
        overlay=(
            render_overlay(hu_slice, heatmap, BRAIN.level, BRAIN.width, OVERLAY_OPACITY)
            if heatmap is not None
            else None
        ),
        outline=mask if mask is not None and mask.any() else None,
    )
