"""Bleed synthesis on real normal slices of both HU ranges: brain-window PNGs (0–80 HU) and
DICOM slices of one negative study (full HU).

The partial-volume rim: pixels outside ``mask`` whose HU changed. The contract is that they lie
within ``PV_RIM_PX`` pixels (Chebyshev) of the mask — plus, for intraparenchymal bleeds, the
oedema's ``EDEMA_MAX_MM`` — and that every other pixel keeps its exact input value.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from data_paths import DATA, LABELLED, require
from scipy import ndimage

from core.dicom.study import load_studies
from core.imaging.synthesis import (
    DEFAULT_PIXEL_MM,
    EDEMA_MAX_MM,
    FILL_RANGE,
    HU_RANGES,
    KINDS,
    PV_RIM_PX,
    Anatomy,
    SyntheticBleed,
    ellipsoid_bleed,
    feasible_kinds,
    find_anatomy,
    synthesize,
    usable,
)
from core.imaging.volume import measure
from core.labels import LABELS
from core.training.dataset import read_challenge_labels, read_png_hu

PNG = DATA / "rsna_png"
#: Normal brain-window slices at ventricle level (checked normal against the label file below).
PNG_IDS = ("ID_5f17ad34a", "ID_6030a5fcb")
#: A negative study; slices 12 and 16 are mid-brain, 1 is skull base, 26 is above the brain.
STUDY = "ID_134d398b61"
DICOM_SLICES = (12, 16)
DICOM_UNUSABLE = (1, 26)


@pytest.fixture(scope="module")
def study_hu() -> np.ndarray:
    rows = list(csv.DictReader(require(LABELLED / "rsna_dev_labels.csv").open(newline="")))
    mine = [r for r in rows if r["StudyInstanceUID"] == STUDY]
    assert mine and all(r["any"] == "0" for r in mine), f"{STUDY} should be a negative study"
    return load_studies(require(LABELLED / "studies" / f"{STUDY}.zip"))[0].default_series.hu


@pytest.fixture(scope="module")
def slices(study_hu: np.ndarray) -> dict[str, tuple[np.ndarray, Anatomy]]:
    """name → (HU, anatomy) for the normal slices used below, PNG and DICOM."""
    labels = read_challenge_labels(require(PNG / "rsna_png_stage_2_train.csv"))
    out = {}
    for image_id in PNG_IDS:
        assert labels[image_id][0] == 0, f"{image_id} is not a normal slice"
        hu = read_png_hu(require(PNG / "images" / f"{image_id}.png"))
        out[f"png:{image_id}"] = (hu, find_anatomy(hu))
    for i in DICOM_SLICES:
        hu = study_hu[i]
        out[f"dicom:{i}"] = (hu, find_anatomy(hu))
    return out


def _rim(mask: np.ndarray, px: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=px)


def _check(s: SyntheticBleed, hu: np.ndarray, a: Anatomy, kind: str) -> None:
    x = np.asarray(hu, np.float32)
    assert s.kind == kind
    assert s.hu.dtype == np.float32 and s.hu.shape == x.shape
    assert s.mask.dtype == bool and s.mask.sum() >= 15
    # Labels: any and the kind's own, nothing else.
    expected = np.zeros(len(LABELS), np.float32)
    expected[0] = expected[LABELS.index(kind)] = 1.0
    np.testing.assert_array_equal(s.labels, expected)
    # Unchanged outside the altered pixels, which lie within the rim of the mask.
    np.testing.assert_array_equal(s.hu[~s.altered], x[~s.altered])
    reach = PV_RIM_PX
    if kind == "intraparenchymal":
        reach += int(np.ceil(EDEMA_MAX_MM / DEFAULT_PIXEL_MM * 1.3))
    assert not (s.altered & ~_rim(s.mask, reach)).any(), "HU changed far from the bleed"
    assert s.altered[s.mask].mean() > 0.95
    # Where: the kind's own compartment, never bone.
    assert not (s.mask & a.skull).any()
    assert (s.mask <= a.cavity).all(), "blood outside the skull's inner table"
    before = x[s.mask]
    if kind == "intraparenchymal":
        assert (s.mask <= a.brain).all()
        assert 15 <= np.median(before) <= 52, "blob not on brain tissue"
    elif kind == "intraventricular":
        assert (s.mask <= a.ventricles).all()
        assert np.median(before) <= 15, "ventricular blood not on CSF"
        # Dependent layering: the blood sits in the lower (posterior) part of its ventricle.
        rows = np.nonzero(s.mask)[0]
        vrows = np.nonzero(a.ventricles & _rim(s.mask, 40))[0]
        assert rows.mean() >= vrows.mean()
    elif kind == "subarachnoid":
        assert np.median(before) <= 18, "subarachnoid blood not on CSF (raw sulcal CSF ≤ 18 HU)"
    else:
        assert a.table_dist[s.mask].min() <= 2, f"{kind} does not touch the inner table"
        assert a.table_dist[s.mask].max() <= 30 / DEFAULT_PIXEL_MM
    # Density: the blood's median in the kind's range, its spread only the slice's noise; on a
    # pale end slice (fill < 1) the same range faded that share of the way from the tissue.
    lo, hi = HU_RANGES[kind]
    top = min(hi, 80.0) if a.clipped else hi
    if s.fill < 1.0:
        assert kind != "subarachnoid" and FILL_RANGE[0] <= s.fill <= FILL_RANGE[1]
    else:
        assert s.fill == 1.0
    low_px = before + s.fill * (lo - before)
    top_px = before + s.fill * (top - before)
    after = s.hu[s.mask]
    assert np.median(low_px) - 1 <= np.median(after) <= np.median(top_px) + 1
    slack = 4 * a.noise_sigma + 1
    inside = (after >= low_px - slack) & (after <= top_px + slack)
    assert inside.mean() >= 0.97
    if a.clipped:
        assert s.hu.min() >= 0 and s.hu.max() <= 80


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("source", ["png:ID_5f17ad34a", "dicom:12"])
def test_each_kind_on_real_normal_slices(
    slices: dict[str, tuple[np.ndarray, Anatomy]], source: str, kind: str
) -> None:
    hu, a = slices[source]
    assert a.clipped == source.startswith("png")
    assert kind in feasible_kinds(a)
    _check(synthesize(hu, 7, kind=kind, anatomy=a), hu, a, kind)


@pytest.mark.parametrize("source", ["png:ID_6030a5fcb", "dicom:16"])
def test_random_kinds_and_seeds(slices: dict[str, tuple[np.ndarray, Anatomy]], source: str) -> None:
    hu, a = slices[source]
    seen = set()
    for seed in range(4):
        s = synthesize(hu, seed, anatomy=a)
        _check(s, hu, a, s.kind)
        seen.add(s.kind)
    assert len(seen) >= 2, "the kind is drawn, not fixed"


def test_some_bleeds_are_pale_end_slices_and_keep_their_whole_mask(slices: dict) -> None:
    """About THROUGH_PLANE_SHARE of the bleeds are the pale end of a bleed: the blood only part
    of the way from the tissue to its density, the mask and the labels those of the whole
    region (as a reader outlines it), so the model learns that pale hyperdensity is blood."""
    hu, a = slices["dicom:16"]
    bleeds = [synthesize(hu, seed, kind="intraparenchymal", anatomy=a) for seed in range(24)]
    pale = [b for b in bleeds if b.fill < 1.0]
    assert 2 <= len(pale) <= 16, [b.fill for b in bleeds]
    for b in pale:
        assert b.labels[0] == 1.0 and b.labels[LABELS.index("intraparenchymal")] == 1.0
        rise = float(np.median(b.hu[b.mask] - hu[b.mask]))
        full = [x for x in bleeds if x.fill == 1.0]
        # fainter than full-density bleeds on the same tissue, yet clearly above the tissue
        assert 5.0 < rise < max(float(np.median(x.hu[x.mask] - hu[x.mask])) for x in full)
        _check(b, hu, a, "intraparenchymal")


def test_seed_reproducible_and_seed_matters(slices: dict) -> None:
    hu, _ = slices["png:ID_5f17ad34a"]
    a = synthesize(hu, 3, kind="subdural")  # anatomy computed inside, as callers would
    b = synthesize(hu, np.random.default_rng(3), kind="subdural")
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.mask, b.mask)
    c = synthesize(hu, 4, kind="subdural")
    assert not np.array_equal(a.mask, c.mask)


def test_png_output_stays_on_the_8bit_grid(slices: dict) -> None:
    hu, a = slices["png:ID_5f17ad34a"]
    s = synthesize(hu, 11, kind="epidural", anatomy=a)
    grey = s.hu * 255 / 80
    np.testing.assert_allclose(grey, np.round(grey), atol=1e-3)
    assert s.hu.min() >= 0 and s.hu.max() <= 80


def test_full_hu_output_keeps_integers_and_bone(slices: dict) -> None:
    hu, a = slices["dicom:12"]
    s = synthesize(hu, 5, kind="subdural", anatomy=a)
    np.testing.assert_array_equal(s.hu, np.round(s.hu))
    np.testing.assert_array_equal(s.hu[a.skull], hu[a.skull].astype(np.float32))
    assert hu.max() > 1000 and s.hu.max() == hu.max()


def test_unusable_slices_raise(study_hu: np.ndarray) -> None:
    for hu in [np.zeros((512, 512), np.float32), study_hu[DICOM_UNUSABLE[0]]]:
        assert not usable(hu)
        assert feasible_kinds(hu) == ()
        with pytest.raises(ValueError, match="unusable"):
            synthesize(hu, 0)
    assert not usable(study_hu[DICOM_UNUSABLE[1]])
    assert usable(study_hu[DICOM_SLICES[0]])


def test_kind_that_does_not_fit_raises(slices: dict) -> None:
    hu, a = slices["dicom:12"]
    filled = np.asarray(hu).copy()
    filled[ndimage.binary_dilation(a.ventricles, iterations=3) & a.brain] = 30  # no ventricles
    assert "intraventricular" not in feasible_kinds(filled)
    with pytest.raises(ValueError, match="ventricle"):
        synthesize(filled, 0, kind="intraventricular")
    with pytest.raises(ValueError, match="unknown kind"):
        synthesize(hu, 0, kind="chronic")


def test_contact_sheet_door(tmp_path) -> None:
    from PIL import Image

    from core.synthesize import main

    out = tmp_path / "sheet.png"
    assert main(["--contact-sheet", str(out), "--png-dir", str(require(PNG)), "--n", "2"]) == 0
    with Image.open(out) as im:
        assert im.size[0] >= 1000 and im.size[1] >= 200
    assert main(["--contact-sheet", str(out), "--png-dir", str(tmp_path / "absent")]) == 2


@pytest.mark.parametrize("ml", [5.0, 20.0, 60.0])
def test_ellipsoid_phantom_has_its_volume_in_a_real_normal_study(ml: float) -> None:
    """The 3-D phantom of issue 14: a hematoma of known volume, painted slice by slice into a
    real negative study, lies in the brain and its voxels hold the stated volume."""
    series = load_studies(require(LABELLED / "studies" / f"{STUDY}.zip"))[0].default_series
    z = np.array([s.z for s in series.slices])
    spacing = series.pixel_spacing or (1.0, 1.0)
    phantom = ellipsoid_bleed(series.hu, z, spacing, ml, 0)
    assert phantom.volume_ml == pytest.approx(ml)
    assert measure(phantom.mask, z, spacing).volume_ml == pytest.approx(ml, rel=0.08)
    assert phantom.mask.any(axis=(1, 2)).sum() >= 2  # it spans slices
    blood = phantom.hu[phantom.mask]
    assert 55 < float(blood.mean()) < 75
    changed = phantom.hu != series.hu
    near = ndimage.binary_dilation(phantom.mask, np.ones((1, 3, 3), bool), iterations=PV_RIM_PX)
    assert not (changed & ~near).any()  # only the bleed and its edge changed
    assert not (changed & (series.hu >= 300)).any()  # no bone turned into blood
    for k in np.flatnonzero(phantom.mask.any(axis=(1, 2))):
        brain = find_anatomy(series.hu[k].astype(np.float32)).cavity
        assert (phantom.mask[k] & ~brain).sum() == 0  # inside the cranial cavity
