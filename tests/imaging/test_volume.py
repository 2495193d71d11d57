"""core.imaging.volume: candidate bleed mask, voxel volume and ABC/2 — on phantoms with known
answers and on the real shared studies (positive slices give volume, normal brain nearly none)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from core.dicom.study import load_studies
from core.imaging.volume import (
    DENSE,
    DENSITY_RULES,
    OUTLINE_RGB,
    REFINE_ABOVE_BRAIN_HU,
    REFINE_MIN_HU,
    BleedEstimate,
    DensityRule,
    draw_outline,
    estimate_bleed,
    mask_from_bleed_map,
    measure,
    slice_spacing,
)


def phantom(
    a: float = 20.0,
    b: float = 14.0,
    c: float = 12.0,
    px: float = 0.5,
    dz: float = 2.5,
    n: int = 40,
    size: int = 256,
    blood: int = 70,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float], float]:
    """A skull ring (1000 HU) around brain (35 HU) holding an ellipsoid of blood with semi-axes
    a, b, c mm; returns HU (n, size, size), slice z (mm), pixel spacing and the true mL."""
    z = np.arange(n) * dz
    zc = (n - 1) / 2 * dz
    yy, xx = np.mgrid[:size, :size].astype(float) * px
    cy = cx = size / 2 * px
    r = np.hypot(yy - cy, xx - cx)
    hu = np.full((n, size, size), -1000, np.int16)
    for k, zk in enumerate(z):
        s = hu[k]
        s[r < 60] = 1000
        s[r < 55] = 35
        e = ((yy - cy) / a) ** 2 + ((xx - cx - 10) / b) ** 2 + ((zk - zc) / c) ** 2
        s[e <= 1] = blood
    return hu, z, (px, px), 4 / 3 * math.pi * a * b * c / 1000


@pytest.mark.parametrize(
    ("a", "b", "c", "px", "dz"),
    [(20, 14, 12, 0.5, 2.5), (30, 25, 20, 0.45, 5.0), (12, 10, 8, 0.5, 1.0)],
)
def test_phantom_volume_within_10_percent(a: float, b: float, c: float, px: float, dz: float):
    hu, z, spacing, true_ml = phantom(a, b, c, px, dz, n=int(60 / dz) + 1)
    est = estimate_bleed(hu, z, spacing, flagged=range(len(z)))
    assert est.volume_ml == pytest.approx(true_ml, rel=0.10)
    # ABC/2 is π/6 → 1/2 of the ellipsoid's box (about 5 % under) plus the slice rounding of C
    assert est.abc2_ml == pytest.approx(true_ml, rel=0.25)
    assert est.slice_spacing_mm == pytest.approx(dz)


def test_only_flagged_slices_count_and_areas_are_per_slice() -> None:
    hu, z, spacing, _ = phantom()
    middle = len(z) // 2
    est = estimate_bleed(hu, z, spacing, flagged=[middle])
    assert est.flagged == (middle,)
    areas = np.array(est.area_mm2)
    assert areas[middle] == pytest.approx(math.pi * 20 * 14, rel=0.10)
    assert (np.delete(areas, middle) == 0).all()
    assert est.volume_ml == pytest.approx(areas[middle] * 2.5 / 1000)


def test_bone_calcification_and_outside_skull_are_not_blood() -> None:
    hu, z, spacing, _ = phantom(blood=35)  # no bleed at all
    hu[:, 10:40, 10:40] = 70  # blood density outside the skull (scalp haematoma)
    hu[:, 120:130, 120:130] = 200  # calcification inside
    est = estimate_bleed(hu, z, spacing, flagged=range(len(z)))
    assert est.volume_ml == 0.0 and est.abc2_ml == 0.0


def test_grad_cam_gates_regions() -> None:
    hu, z, spacing, _ = phantom()
    k = len(z) // 2
    low = {k: np.zeros(hu.shape[1:], np.float32)}
    low[k][:20, :20] = 1.0  # the heatmap points elsewhere
    high = {k: np.zeros(hu.shape[1:], np.float32)}
    high[k][128, 148] = 1.0  # the heatmap points into the bleed
    assert estimate_bleed(hu, z, spacing, [k], low).area_mm2[k] == 0.0
    assert estimate_bleed(hu, z, spacing, [k], high).area_mm2[k] > 500


def test_single_slice_has_area_but_no_volume() -> None:
    hu, z, spacing, _ = phantom(n=1)
    est = estimate_bleed(hu, z, spacing, [0])
    assert est.area_mm2[0] > 0 and est.volume_ml == 0.0
    assert slice_spacing([5.0]) == 0.0


def test_outline_is_drawn_on_the_border_only() -> None:
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    img = draw_outline(np.full((20, 20), 100, np.uint8), mask, thickness=1)
    assert img.shape == (20, 20, 3)
    assert tuple(img[5, 10]) == OUTLINE_RGB and tuple(img[10, 10]) == (100, 100, 100)
    assert tuple(img[0, 0]) == (100, 100, 100)


def _labelled(study_zips: list[Path], label_rows) -> list[tuple[str, BleedEstimate, int]]:
    out = []
    for path in study_zips:
        study = load_studies(path)[0]
        series = study.default_series
        rows = {r["image_id"].removeprefix("ID_"): r for r in label_rows[study.study_instance_uid]}
        y = np.array(
            [int(rows[s.sop_instance_uid.removeprefix("ID_")]["any"]) for s in series.slices]
        )
        # positive studies: their labelled bleeding slices; negative studies: every slice
        flagged = np.flatnonzero(y) if y.any() else np.arange(len(y))
        z = [s.z for s in series.slices]
        est = estimate_bleed(series.hu, z, series.pixel_spacing, flagged)
        out.append((study.study_instance_uid, est, int(y.any())))
    return out


def test_real_studies_positive_slices_give_volume_normal_brain_little(
    study_zips: list[Path], label_rows
) -> None:
    results = _labelled(study_zips, label_rows)
    positive = [e for _, e, y in results if y]
    negative = [e for _, e, y in results if not y]
    assert len(positive) == 6 and len(negative) == 10
    # 5 of the 6 bleeding studies show blood-density regions on their labelled slices (the
    # sixth has 4 slices of a small parenchymal bleed that the density rule misses)
    assert sum(e.volume_ml > 1.0 for e in positive) >= 5
    # per examined slice, bleeding slices hold far more candidate area than normal ones
    per_slice_pos = np.mean([np.sum(e.area_mm2) / len(e.flagged) for e in positive])
    per_slice_neg = np.mean([np.sum(e.area_mm2) / len(e.flagged) for e in negative])
    assert per_slice_pos > 3 * per_slice_neg
    # and half the normal studies stay under 5 mL even with every slice examined
    assert sum(e.volume_ml < 5.0 for e in negative) >= 5


# --------------------------------------------------------------------------- the bleed map


def sphere_phantom(
    ml: float, z: np.ndarray, zc: float = 0.0, px: float = 0.5, size: int = 256
) -> np.ndarray:
    """Skull ring, brain, and a sphere of ``ml`` blood centred at ``zc``: HU (n, size²)."""
    radius = (3 * ml * 1000 / (4 * math.pi)) ** (1 / 3)
    yy, xx = np.mgrid[:size, :size].astype(float) * px
    c = size / 2 * px
    r = np.hypot(yy - c, xx - c)
    hu = np.full((len(z), size, size), -1000, np.int16)
    for k, zk in enumerate(z):
        hu[k][r < 62] = 1000
        hu[k][r < 57] = 35
        hu[k][(yy - c) ** 2 + (xx - c - 8) ** 2 + (zk - zc) ** 2 <= radius**2] = 70
    return hu


@pytest.mark.parametrize("ml", [5.0, 20.0, 60.0])
def test_volume_uses_each_slice_own_extent_on_mixed_spacing(ml: float) -> None:
    """The shape of ID_286f17f9e7: 2.7 mm slices below, 5.4 mm above. A single spacing
    (the median) misses the volume by a third; each slice's own extent gets it."""
    z = np.concatenate([np.arange(-27, 0, 2.7), np.arange(0, 60, 5.4)])
    hu = sphere_phantom(ml, z, zc=0.0)  # half the sphere in each part
    est = measure(hu == 70, z, (0.5, 0.5))
    assert est.volume_ml == pytest.approx(ml, rel=0.08)
    one_spacing = float(np.sum(est.area_mm2)) * slice_spacing(z) / 1000
    assert abs(one_spacing - ml) > 0.25 * ml


def test_mask_from_the_bleed_map_keeps_blood_inside_the_skull() -> None:
    z = np.arange(3) * 5.0
    hu = sphere_phantom(20.0, z, zc=5.0)
    size = hu.shape[1]
    grid = np.zeros((3, size // 4, size // 4), np.float32)
    grid[1, 28:36, 28:38] = 0.9  # over the blood, inside the skull
    grid[1, 0:6, 0:6] = 0.95  # outside the head: dropped
    grid[2, 40, 40] = 0.6  # one 2 mm cell: under the smallest region, dropped
    mask = mask_from_bleed_map(hu, grid, (0.5, 0.5), threshold=0.5)
    assert mask.shape == hu.shape and mask[0].sum() == 0 and mask[2].sum() == 0
    rows, cols = np.nonzero(mask[1])
    assert rows.min() >= 28 * 4 - 4 and rows.max() < 36 * 4 + 4
    assert cols.min() >= 28 * 4 - 4 and cols.max() < 38 * 4 + 4
    assert mask[1].sum() > 0.8 * (8 * 4) * (10 * 4)
    assert mask_from_bleed_map(hu, grid, (0.5, 0.5), threshold=0.95).sum() == 0
    with pytest.raises(ValueError, match="bleed map"):
        mask_from_bleed_map(hu, grid[:2], (0.5, 0.5))


def test_the_density_rule_decides_how_pale_a_pixel_may_be_and_stay_blood() -> None:
    """A hematoma with a pale end (42 HU on brain of 30): the dense rule (v3's) keeps only the
    dense core, a paler rule the whole region; neither grows into brain, and a rule out of the
    plausible range is not taken from a card."""
    z = np.arange(3) * 5.0
    hu = sphere_phantom(20.0, z, zc=5.0)
    hu = np.where(hu == 35, 30, hu).astype(np.int16)  # brain at 30 HU
    pale = (hu[1] == 70) & (np.arange(hu.shape[2])[None, :] >= 144)  # the sphere's centre
    hu[1][pale] = 42  # half the bleed's cut reads pale
    size = hu.shape[1]
    blood = (hu[1] >= 42) & (hu[1] <= 100)
    grid = np.zeros((3, size // 4, size // 4), np.float32)
    cells = blood.reshape(size // 4, 4, size // 4, 4).any(axis=(1, 3))
    grid[1] = ndimage.binary_dilation(cells, iterations=2) * 0.9
    dense = mask_from_bleed_map(hu, grid, (0.5, 0.5), 0.5, rule=DENSE)[1]
    paler = mask_from_bleed_map(hu, grid, (0.5, 0.5), 0.5, rule=DensityRule(38.0, 5.0))[1]
    assert not (dense & pale).any() and dense.sum() > 0.9 * (blood & ~pale).sum()
    assert paler.sum() > 0.95 * blood.sum() and not (paler & ~blood).any()
    assert DensityRule.from_dict({"floor_hu": 40, "above_brain_hu": 6}) == DensityRule(40, 6)
    for bad in ({"floor_hu": 10, "above_brain_hu": 6}, {"floor_hu": 40}, "dense", None):
        assert DensityRule.from_dict(bad) is None
    assert DENSITY_RULES[0] == DENSE == DensityRule(REFINE_MIN_HU, REFINE_ABOVE_BRAIN_HU)


@pytest.mark.parametrize("ml", [2.0, 20.0])
def test_a_coarse_map_is_refined_to_the_blood_it_covers(ml: float) -> None:
    """The map is one value per ~2 mm cell here (per 6 mm on a head): a block of map over a
    sphere of blood gives the sphere's volume, not the block's; a map over brain alone gives
    nothing (a seed of blood density is needed)."""
    z = np.arange(-30.0, 31.0, 2.5)
    hu = sphere_phantom(ml, z)
    size = hu.shape[1]
    inside = hu == 70
    cells = inside.reshape(len(z), size // 4, 4, size // 4, 4).any(axis=(2, 4))
    grid = ndimage.binary_dilation(cells, iterations=2, structure=np.ones((1, 3, 3), bool))
    mask = mask_from_bleed_map(hu, grid.astype(np.float32) * 0.9, (0.5, 0.5), threshold=0.5)
    assert measure(mask, z, (0.5, 0.5)).volume_ml == pytest.approx(ml, rel=0.15)
    coarse = measure(np.repeat(np.repeat(grid, 4, 1), 4, 2), z, (0.5, 0.5)).volume_ml
    assert coarse > 1.5 * ml  # what the map alone would have said
    brain_only = np.where(hu == 70, 35, hu).astype(np.int16)
    assert not mask_from_bleed_map(brain_only, grid * 0.9, (0.5, 0.5), threshold=0.5).any()


@pytest.mark.slow
def test_shipped_model_measures_phantom_hematomas_within_15_percent(study_zips) -> None:
    """Issue 14's phantom: hematomas of 5, 20 and 60 mL painted into a real normal study, scored
    and outlined by the shipped model through the app's engine."""
    from core.inference.predictor import Predictor, ResultCache
    from core.model.checkpoint import find_default_checkpoint, load_checkpoint
    from core.training.bleed_map_check import phantom_report

    predictor = Predictor(load_checkpoint(find_default_checkpoint()), "cpu", cache=ResultCache())
    assert predictor.has_bleed_map
    normal = next(p for p in study_zips if p.stem == "ID_134d398b61")
    rows = phantom_report(predictor, load_studies(normal)[0])
    assert [r["true_ml"] for r in rows] == pytest.approx([5.0, 20.0, 60.0], rel=0.01)
    for r in rows:
        assert abs(r["error"]) <= 0.15, rows
