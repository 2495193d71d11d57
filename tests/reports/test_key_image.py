"""core.reports.key_image: the one composer of the key slice gives, pixel for pixel, what the
PDF and the Secondary Capture each composed before it existed (the reference code below is
theirs, as it was), on a synthetic series with and without heatmap and outline."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from core.imaging.volume import BleedEstimate, draw_outline
from core.imaging.windowing import BRAIN, apply_window
from core.model.gradcam import Heatmap, render_overlay
from core.reports.key_image import compose_key_image
from core.reports.pdf import ReportInput
from core.reports.secondary_capture import key_image

SLICES, ROWS, COLS = 4, 48, 40
OUTLINED, EMPTY = 2, 1  # a slice with a bleed in the mask, one without


def _old_pdf_panels(hu, k, heatmap, estimate):
    """render_pdf's images before the composer: (marked, overlay, outlined?)."""
    plain = apply_window(hu[k], BRAIN.level, BRAIN.width)
    marked = plain
    if estimate is not None and estimate.mask[k].any():
        marked = draw_outline(plain, estimate.mask[k])
    overlay = (
        render_overlay(hu[k], heatmap, BRAIN.level, BRAIN.width, 0.5)
        if heatmap is not None
        else None
    )
    return marked, overlay, marked is not plain


def _old_secondary_capture_image(hu, k, heatmap, estimate):
    """secondary_capture.key_image before the composer."""
    if heatmap is not None:
        rgb = render_overlay(hu[k], heatmap, BRAIN.level, BRAIN.width, 0.5)
    else:
        rgb = np.repeat(apply_window(hu[k], BRAIN.level, BRAIN.width)[..., None], 3, axis=-1)
    if estimate is not None and estimate.mask[k].any():
        rgb = draw_outline(rgb, estimate.mask[k])
    return np.ascontiguousarray(rgb, dtype=np.uint8)


@pytest.fixture(scope="module")
def hu() -> np.ndarray:
    """HU from air to bone, so every window band and both clips occur."""
    rng = np.random.default_rng(7)
    return rng.integers(-1100, 1500, (SLICES, ROWS, COLS)).astype(np.int16)


@pytest.fixture(scope="module")
def heatmap() -> Heatmap:
    yy, xx = np.mgrid[0:ROWS, 0:COLS]
    cam = np.exp(-((yy - 20) ** 2 + (xx - 18) ** 2) / 120.0).astype(np.float32)
    return Heatmap(label="subdural", label_index=5, probability=0.8, cam=cam)


@pytest.fixture(scope="module")
def estimate() -> BleedEstimate:
    mask = np.zeros((SLICES, ROWS, COLS), bool)
    mask[OUTLINED, 15:30, 10:25] = True
    return BleedEstimate(
        mask=mask,
        flagged=(EMPTY, OUTLINED),
        area_mm2=(0.0, 0.0, 225.0, 0.0),
        volume_ml=1.1,
        abc2_ml=1.0,
        slice_spacing_mm=5.0,
        pixel_area_mm2=1.0,
    )


@pytest.mark.parametrize("k", [OUTLINED, EMPTY])
@pytest.mark.parametrize("with_heatmap", [True, False])
@pytest.mark.parametrize("with_estimate", [True, False])
def test_the_composer_gives_what_both_reports_composed_before(
    hu, heatmap, estimate, k: int, with_heatmap: bool, with_estimate: bool
) -> None:
    heat = heatmap if with_heatmap else None
    est = estimate if with_estimate else None
    key = compose_key_image(hu, k, heat, est)

    marked, overlay, outlined = _old_pdf_panels(hu, k, heat, est)
    assert key.outlined is outlined
    new_marked = key.marked()
    assert new_marked.dtype == marked.dtype and np.array_equal(new_marked, marked)
    if overlay is None:
        assert key.overlay is None
    else:
        assert key.overlay is not None and np.array_equal(key.overlay, overlay)

    sc = _old_secondary_capture_image(hu, k, heat, est)
    composite = key.composite()
    assert composite.dtype == np.uint8 and composite.flags.c_contiguous
    assert composite.shape == (ROWS, COLS, 3) and np.array_equal(composite, sc)

    # the cases differ where they should, so the comparisons above could fail
    assert outlined == (with_estimate and k == OUTLINED)
    grey = np.repeat(key.plain[..., None], 3, axis=-1)
    assert np.array_equal(composite, grey) == (not with_heatmap and not outlined)


def test_both_reports_take_the_key_image_from_their_input(hu, heatmap, estimate) -> None:
    """ReportInput.key_image() (the PDF's panels) and the Secondary Capture's image are the
    composer's, for the report's own key slice."""
    data = ReportInput(
        study=SimpleNamespace(default_series=SimpleNamespace(hu=hu)),
        prediction=None,
        key_slice=OUTLINED,
        heatmap=heatmap,
        estimate=estimate,
        reviews=(),
        model_name="test",
        model_identity="test@0",
        card_summary=None,
        patient="P",
    )
    key = data.key_image()
    assert key.index == OUTLINED and key.outlined
    assert np.array_equal(
        key_image(data), _old_secondary_capture_image(hu, OUTLINED, heatmap, estimate)
    )
    marked, overlay, _ = _old_pdf_panels(hu, OUTLINED, heatmap, estimate)
    assert np.array_equal(key.marked(), marked) and np.array_equal(key.overlay, overlay)
