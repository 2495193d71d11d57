"""Synthetic acute hemorrhage pasted into a normal head-CT slice, with its exact pixel mask.

Why: real labels here say only *which* slices bleed, never *where*, and 16 studies are 16
patients. A normal slice with a plausible bleed painted in gives a positive example whose mask
is known to the pixel, from as many patients as there are normal slices. A trial with cruder
shapes already ranked real bleeding slices well (issue 10), so the aim is plausibility, not
photorealism: the right density, place, shape and edge for each subtype.

What is painted, per subtype (densities in HU, sizes in mm through ``pixel_mm``):

- intraparenchymal: an irregular blob (a few overlapping ellipses, thresholded through smooth
  noise) inside brain tissue, 55–85 HU, often with a hypodense oedema rim (15–25 HU);
- subdural: a crescent along the skull's inner table, long span, tapering ends, mostly
  50–80 HU, sometimes isodense (35–45 HU);
- epidural: a biconvex lens along the inner table, short span, thick in the middle, 60–85 HU;
- subarachnoid: the CSF of the sulci near the surface (or of the deep fissures and cisterns)
  turned 50–70 HU: thin and serpiginous because the sulci are;
- intraventricular: blood layering in the dependent (posterior, bottom-of-image) part of a
  ventricle below a horizontal fluid level, 50–75 HU.

Every bleed gets a partial-volume edge (its fraction falls off just outside the mask, sharp or
soft), a smooth variation of density inside, and on about a third of them (not the subarachnoid)
a through-plane partial volume: the slice holds only the end of the bleed, which reads paler,
part of the way from the tissue to the blood's density. Then noise
estimated from the slice's own brain, and, for 0–80 HU slices (the brain-window PNGs), values
clipped to 0–80 and put back on the PNG's 8-bit grid. The anatomy (skull, brain, ventricles,
CSF, the inner table) is found from HU alone, so the same code serves DICOM slices (full HU)
and PNG slices (only 0–80 HU known, where bone reads 80).

Contract: ``mask`` is the blood itself (every pixel that was replaced by blood, wholly or, at a
bleed's pale end, by the same fraction everywhere inside it); HU also changes
in a *rim* outside it — the partial-volume edge (at most ``PV_RIM_PX`` pixels from the mask) and,
for intraparenchymal bleeds, the oedema (at most ``EDEMA_MAX_MM`` plus that edge) — and nowhere
else: ``altered`` holds exactly the pixels whose HU changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from core.labels import LABELS

#: The five subtypes synthesised, in LABELS order.
KINDS: tuple[str, ...] = tuple(k for k in LABELS if k != "any")

#: Nominal HU of the blood per kind (before the slice's noise is added). Subdural spans the
#: isodense (35–45) and the usual acute (50–80) densities.
HU_RANGES: dict[str, tuple[float, float]] = {
    "epidural": (60.0, 85.0),
    "intraparenchymal": (55.0, 85.0),
    "intraventricular": (50.0, 75.0),
    "subarachnoid": (50.0, 70.0),
    "subdural": (35.0, 80.0),
}

#: Default in-plane pixel size (mm): the usual 25 cm field of view on 512 pixels.
DEFAULT_PIXEL_MM = 0.488
#: Gaussian sigma (pixels) of the partial-volume edge, drawn per bleed: a sharp edge where the
#: slice cuts the bleed square to its wall, a soft one where the wall slants through the slice
#: thickness (real hematomas on 5 mm slices fade over a millimetre or more).
PV_SIGMA_PX_RANGE = (0.8, 1.8)
#: Through-plane partial volume: on this share of bleeds (not the thin subarachnoid ones) the
#: slice catches only the top or bottom of the bleed, which then reads paler than blood, as a
#: fraction FILL_RANGE of the way from the tissue to the blood's density. The mask still holds
#: the whole region: a reader outlining a hematoma outlines its pale end slices too (the
#: hand-drawn masks of ID_286f17f9e7 do, at 33–48 HU on their end slices).
THROUGH_PLANE_SHARE = 0.3
FILL_RANGE = (0.45, 0.9)
#: Range (HU) of the smooth variation of density inside a bleed (clot, serum, hematocrit).
VARIATION_HU_RANGE = (3.0, 8.0)
#: Blood fractions below this are dropped, which bounds the edge to PV_RIM_PX pixels.
_PV_FLOOR = 0.02
#: Farthest a partial-volume change reaches outside the mask (pixels, Chebyshev distance).
PV_RIM_PX = 3
#: Widest oedema rim (mm) around an intraparenchymal bleed.
EDEMA_MAX_MM = 8.0

#: Smallest brain cross-section (mm²) a slice needs to take a bleed: below it the slice is
#: the top of the head or a skull base with only scraps of brain.
MIN_BRAIN_MM2 = 2500.0
#: Share of directions around the brain in which the inner table must be found.
MIN_ENCLOSURE = 0.7
#: Least solidity (area / convex-hull area) of the cranial cavity: the vault encloses a convex
#: cavity, while at the skull base petrous bone, clinoids and orbits cut into it, and painting
#: there goes wrong.
MIN_SOLIDITY = 0.9
#: Most bone a usable slice may hold, as a share of the head inside the outer table: above it
#: the slice is the skull base (petrous bone, sinuses, orbits) even where the part of the cavity
#: found is convex. The vault cut obliquely near the vertex reaches ~45 %.
MAX_BONE_SHARE = 0.5
#: 0–80 HU input is recognised by its maximum: the PNG's 255 reads 80 HU.
CLIP_MAX_HU = 80.5

#: Brain tissue. Grey matter is ~40 HU, but beam hardening next to the vault lifts normal
#: cortex to ~50 HU on some scanners (seen on these slices), so the search reaches 52.
_TISSUE = (15.0, 52.0)
_CSF = (-10.0, 15.0)
_ANGLE_BINS = 72


@dataclass(frozen=True)
class SyntheticBleed:
    """A slice with a painted bleed. ``hu`` float32 like the input; ``mask`` bool, the blood;
    ``altered`` bool, every pixel whose HU changed (mask, its partial-volume edge, oedema);
    ``labels`` float32 (6,) in LABELS order; ``kind`` one of KINDS; ``fill`` the through-plane
    share of blood (1.0, or FILL_RANGE on a pale end slice of the bleed)."""

    hu: np.ndarray
    mask: np.ndarray
    altered: np.ndarray
    labels: np.ndarray
    kind: str
    fill: float = 1.0


@dataclass(frozen=True)
class Anatomy:
    """What a slice holds, found from HU. Masks are bool, same shape as the slice.

    ``skull``: bone (> 100 HU, or the 80-HU ring on 0–80 slices) around the brain.
    ``brain``: brain tissue (15–45 HU), largest component, holes (ventricles) filled.
    ``cavity``: everything inside the skull's inner table that is not bone.
    ``csf``: CSF-density pixels in the cavity (on a smoothed copy); ``csf_raw``: the same on the
    raw pixels up to 18 HU, specks dropped (thin sulci). ``ventricles``: CSF deep inside the brain.
    ``table_dist``: distance (pixels) to the skull, meaningful inside the cavity.
    ``angle``: direction (degrees, 0 = anterior/top of image, 90 = image right) from the
    brain's centre. ``table_bins``: for each of 72 5° sectors, whether the inner table is there.
    """

    clipped: bool
    skull: np.ndarray
    brain: np.ndarray
    cavity: np.ndarray
    csf: np.ndarray
    csf_raw: np.ndarray
    ventricles: np.ndarray
    table_dist: np.ndarray
    angle: np.ndarray
    table_bins: np.ndarray
    centre: tuple[float, float]
    noise_sigma: float
    usable: bool
    reason: str


# --------------------------------------------------------------------------- anatomy


def is_clipped(hu: np.ndarray) -> bool:
    """True for a 0–80 HU slice (a brain-window PNG): nothing reads above 80 HU."""
    return bool(np.max(hu) <= CLIP_MAX_HU)


def _disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def find_anatomy(
    hu: np.ndarray, *, clipped: bool | None = None, pixel_mm: float = DEFAULT_PIXEL_MM
) -> Anatomy:
    """Skull, brain, cavity, CSF and ventricles of one axial slice, from HU thresholds.

    Why thresholds and not a model: the densities of bone, brain and CSF are fixed physics and
    the same on every scanner to a few HU, so a few morphological steps find them on any slice
    of either HU range; ``usable`` says whether the result is trustworthy enough to paint on.
    """
    x = np.asarray(hu, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected one 2-D slice, got shape {x.shape}")
    if clipped is None:
        clipped = is_clipped(x)
    bone_raw = x >= 79.5 if clipped else x > 100.0
    tissue = (x >= _TISSUE[0]) & (x <= _TISSUE[1]) & ~ndimage.binary_dilation(bone_raw)
    # Opening breaks the thin bridges through which scalp and brain touch at gaps in the skull.
    opened = ndimage.binary_opening(tissue, iterations=2)
    lab, n = ndimage.label(opened)
    if n == 0:
        return _unusable(x, clipped, "no brain-density tissue")
    sizes = np.bincount(lab.ravel())[1:]
    core = lab == (int(np.argmax(sizes)) + 1)
    core = ndimage.binary_dilation(core, iterations=2, mask=tissue)
    brain = ndimage.binary_fill_holes(core)
    area_mm2 = float(brain.sum()) * pixel_mm * pixel_mm
    if area_mm2 < MIN_BRAIN_MM2:
        return _unusable(x, clipped, f"brain cross-section {area_mm2:.0f} mm² is too small")

    skull = _skull(bone_raw & ~brain, brain)
    enclosed = ndimage.binary_fill_holes(skull | brain)
    clab, _ = ndimage.label(enclosed & ~skull)
    keep = np.unique(clab[brain & ~skull])
    cavity = np.isin(clab, keep[keep > 0])
    # Second pass: brain tissue anywhere in the cavity that touches the core (the outer gyri
    # the opening cut off), now that the skull keeps the scalp out.
    brain = ndimage.binary_fill_holes(ndimage.binary_propagation(core, mask=tissue & cavity) | core)
    if skull.any():
        table_dist = ndimage.distance_transform_edt(~skull).astype(np.float32)
    else:
        table_dist = np.full(x.shape, np.inf, dtype=np.float32)
    solidity = _solidity(cavity)
    head = float((skull | cavity).sum())
    bone_share = float(skull.sum()) / head if head else 1.0

    cy, cx = ndimage.center_of_mass(brain)
    yy, xx = np.indices(x.shape, dtype=np.float32)
    angle = np.degrees(np.arctan2(xx - cx, cy - yy)) % 360.0
    table = cavity & (table_dist <= 2.0)
    bins = np.zeros(_ANGLE_BINS, dtype=bool)
    bins[np.unique((angle[table] // (360.0 / _ANGLE_BINS)).astype(int) % _ANGLE_BINS)] = True
    enclosure = float(bins.mean())

    # CSF on a lightly smoothed copy: single noisy pixels would make the ventricles a sieve.
    xs = ndimage.gaussian_filter(x, 1.0)
    csf = cavity & (xs >= _CSF[0]) & (xs <= _CSF[1])
    csf_raw = cavity & (x >= _CSF[0]) & (x <= _CSF[1] + 3.0)
    rlab, rn = ndimage.label(csf_raw, structure=np.ones((3, 3), bool))
    if rn:
        big = np.flatnonzero(np.bincount(rlab.ravel()) >= 8)
        csf_raw = np.isin(rlab, big[big > 0])
    depth = ndimage.distance_transform_edt(brain)
    deep = csf & brain & (depth >= 10.0 / pixel_mm)
    deep = ndimage.binary_opening(deep)
    # Grow the deep CSF back to the whole CSF pool it belongs to, inside the brain only.
    ventricles = ndimage.binary_propagation(deep, mask=csf & brain)
    vlab, vn = ndimage.label(ventricles)
    if vn:
        vs = np.bincount(vlab.ravel())
        big = np.flatnonzero(vs * pixel_mm * pixel_mm >= 12.0)
        ventricles = ndimage.binary_fill_holes(np.isin(vlab, big[big > 0]))

    sigma = _noise_sigma(x, brain & (x >= 20) & (x <= 40))
    if enclosure < MIN_ENCLOSURE:
        reason = f"inner table found in only {enclosure:.0%} of directions"
    elif solidity < MIN_SOLIDITY:
        reason = f"the cranial cavity is not convex (solidity {solidity:.2f}: skull base)"
    elif bone_share > MAX_BONE_SHARE:
        reason = f"bone is {bone_share:.0%} of the head's cross-section (skull base)"
    else:
        reason = ""
    usable = not reason
    return Anatomy(
        clipped=bool(clipped),
        skull=skull,
        brain=brain,
        cavity=cavity,
        csf=csf,
        csf_raw=csf_raw,
        ventricles=ventricles,
        table_dist=table_dist,
        angle=angle,
        table_bins=bins,
        centre=(float(cy), float(cx)),
        noise_sigma=sigma,
        usable=bool(usable),
        reason=reason,
    )


def _skull(bone: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The bone around the brain: components that enclose most of it (the vault, even with a
    gap of a few pixels) or that lie within 6 mm of it (fragments at the skull base); not the
    couch, the face or calcifications inside the brain."""
    lab, n = ndimage.label(bone, structure=np.ones((3, 3), bool))
    if n == 0:
        return bone
    near = ndimage.binary_dilation(brain, iterations=12)
    keep = set(np.unique(lab[near & bone]).tolist()) - {0}
    sizes = np.bincount(lab.ravel())
    for k in np.argsort(sizes[1:])[::-1][:4] + 1:
        if k in keep or sizes[k] < 200:
            continue
        ring = ndimage.binary_fill_holes(ndimage.binary_closing(lab == k, structure=_disk(3)))
        if (ring & brain).sum() >= 0.5 * brain.sum():
            keep.add(int(k))
    return np.isin(lab, sorted(keep))


def _solidity(region: np.ndarray) -> float:
    """Area of ``region`` over the area of its convex hull (1 for a convex shape)."""
    edge = region & ~ndimage.binary_erosion(region)
    pts = np.argwhere(edge).astype(np.float64)
    if len(pts) < 3:
        return 0.0
    try:
        hull = ConvexHull(pts)
    except QhullError:
        return 0.0
    return float(region.sum()) / max(float(hull.volume), 1.0)


def _unusable(x: np.ndarray, clipped: bool, reason: str) -> Anatomy:
    e = np.zeros(x.shape, dtype=bool)
    return Anatomy(
        clipped=bool(clipped),
        skull=e,
        brain=e,
        cavity=e,
        csf=e,
        csf_raw=e,
        ventricles=e,
        table_dist=np.full(x.shape, np.inf, dtype=np.float32),
        angle=np.zeros(x.shape, dtype=np.float32),
        table_bins=np.zeros(_ANGLE_BINS, dtype=bool),
        centre=(x.shape[0] / 2, x.shape[1] / 2),
        noise_sigma=0.0,
        usable=False,
        reason=reason,
    )


def _noise_sigma(x: np.ndarray, where: np.ndarray) -> float:
    """Robust pixel noise (HU) of brain tissue: the MAD of the slice minus its 5×5 mean."""
    where = ndimage.binary_erosion(where, iterations=2)
    if where.sum() < 200:
        return 3.0
    resid = (x - ndimage.uniform_filter(x, 5))[where]
    mad = float(np.median(np.abs(resid - np.median(resid))))
    return float(np.clip(1.4826 * mad * np.sqrt(25.0 / 24.0), 0.5, 15.0))


def feasible_kinds(
    hu: np.ndarray | Anatomy, *, clipped: bool | None = None, pixel_mm: float = DEFAULT_PIXEL_MM
) -> tuple[str, ...]:
    """The kinds that can be painted on this slice (empty when the slice is unusable):
    a slice without ventricles cannot take intraventricular blood, one without sulcal CSF no
    subarachnoid blood."""
    a = hu if isinstance(hu, Anatomy) else find_anatomy(hu, clipped=clipped, pixel_mm=pixel_mm)
    if not a.usable:
        return ()
    out = []
    for k in KINDS:
        if k == "intraventricular" and a.ventricles.sum() < 60:
            continue
        if k == "subarachnoid" and (_thin_csf(a) & ~a.ventricles).sum() < 40:
            continue
        out.append(k)
    return tuple(out)


def usable(
    hu: np.ndarray, *, clipped: bool | None = None, pixel_mm: float = DEFAULT_PIXEL_MM
) -> bool:
    """Whether a bleed can be painted on this slice at all (enough brain, enclosed by skull).
    ``synthesize`` raises ValueError on a slice for which this is False."""
    return find_anatomy(hu, clipped=clipped, pixel_mm=pixel_mm).usable


# --------------------------------------------------------------------------- helpers


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``sigma`` px."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    s = float(f.std())
    return f / s if s > 0 else f


def _thin_csf(a: Anatomy) -> np.ndarray:
    """CSF in narrow spaces (sulci, fissures, cisterns), not in wide pools like ventricles.

    Thin sulci are one or two pixels wide and partial volume lifts them above the CSF range
    once smoothed, so this reads the raw CSF pixels (``a.csf_raw``)."""
    wide = ndimage.binary_opening(a.csf, structure=_disk(3))
    # Keep off the ventricles' walls: their rim pixels are thin CSF too, but not subarachnoid.
    return a.csf_raw & ~ndimage.binary_dilation(wide | a.ventricles, iterations=4)


def _sector(angle: np.ndarray, start: float, span: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixels within [start, start + span] degrees, and their position u ∈ [0, 1] in it."""
    u = ((angle - start) % 360.0) / span
    return u <= 1.0, np.clip(u, 0.0, 1.0)


def _pick_arc(a: Anatomy, rng: np.random.Generator, span: float) -> float | None:
    """Start angle of an arc of ``span`` degrees inside one hemisphere (not crossing the
    midline at the front or back) along which the inner table is present nearly throughout."""
    width = 360.0 / _ANGLE_BINS
    starts = []
    for s in np.arange(0.0, 360.0, width):
        lo, hi = 8.0, 172.0
        inside = (lo <= s and s + span <= hi) or (180 + lo <= s and s + span <= 180 + hi)
        if not inside:
            continue
        idx = (np.arange(s, s + span, width) // width).astype(int) % _ANGLE_BINS
        if a.table_bins[idx].mean() >= 0.9:
            starts.append(s)
    if not starts:
        return None
    return float(starts[int(rng.integers(len(starts)))]) + float(rng.uniform(0, width))


# --------------------------------------------------------------------------- kinds


def _intraparenchymal(
    a: Anatomy, rng: np.random.Generator, px: float
) -> tuple[np.ndarray, float, np.ndarray | None]:
    shape2 = a.brain.shape
    depth = ndimage.distance_transform_edt(a.brain & ~a.ventricles)
    radius_mm = float(np.exp(rng.uniform(np.log(4.0), np.log(22.0))))
    for _ in range(6):
        r = radius_mm / px
        cand = np.flatnonzero(depth.ravel() >= r * 0.7 + 3.0 / px)
        if cand.size:
            break
        radius_mm *= 0.7
    else:
        raise ValueError("no room for an intraparenchymal bleed in this brain")
    cy, cx = np.unravel_index(int(cand[int(rng.integers(cand.size))]), shape2)
    half = int(np.ceil(2.2 * r)) + 4
    y0, y1 = max(0, cy - half), min(shape2[0], cy + half + 1)
    x0, x1 = max(0, cx - half), min(shape2[1], cx + half + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    field = np.zeros(yy.shape, np.float32)
    for i in range(int(rng.integers(2, 6))):
        oy, ox = (0.0, 0.0) if i == 0 else rng.normal(0.0, 0.45 * r, 2)
        ay = r * rng.uniform(0.45, 1.0)
        ax = ay * rng.uniform(0.5, 1.6)
        t = rng.uniform(0, np.pi)
        dy, dx = yy - (cy + oy), xx - (cx + ox)
        u = dy * np.cos(t) + dx * np.sin(t)
        v = -dy * np.sin(t) + dx * np.cos(t)
        field = np.maximum(field, np.exp(-(u * u / (ay * ay) + v * v / (ax * ax))))
    field += 0.12 * _smooth_noise(rng, field.shape, max(1.5, r / 4))
    local = field > 0.45
    shape = np.zeros(shape2, bool)
    shape[y0:y1, x0:x1] = local
    shape &= ndimage.binary_erosion(a.brain, iterations=2) & ~ndimage.binary_dilation(
        a.ventricles, iterations=2
    )
    lab, n = ndimage.label(shape)
    if n == 0:
        raise ValueError("the intraparenchymal blob fell outside the brain")
    shape = lab == (int(np.argmax(np.bincount(lab.ravel())[1:])) + 1)
    edema = None
    if rng.random() < 0.65:
        width = rng.uniform(2.0, EDEMA_MAX_MM) / px
        dist = ndimage.distance_transform_edt(~shape)
        # An uneven rim: the fall-off stretched or shortened by smooth noise, but never beyond
        # ``width`` from the blood (where the noise dips far below zero the stretched distance
        # would turn negative and paint oedema anywhere in the brain).
        d = dist * np.clip(1.0 + 0.3 * _smooth_noise(rng, shape2, 6.0), 0.5, None)
        g = np.clip(1.0 - d / width, 0.0, 1.0) ** 0.7
        g[shape | ~a.brain | a.ventricles | (dist > width)] = 0.0
        edema = g.astype(np.float32) * np.float32(rng.uniform(0.6, 1.0))
    return shape, float(rng.uniform(*HU_RANGES["intraparenchymal"])), edema


def _extra_axial(
    a: Anatomy, rng: np.random.Generator, px: float, kind: str
) -> tuple[np.ndarray, float, None]:
    if kind == "subdural":
        span = float(rng.uniform(50.0, 150.0))
        thick = float(rng.uniform(3.0, 14.0)) / px
    else:
        span = float(rng.uniform(22.0, 55.0))
        thick = float(rng.uniform(8.0, 22.0)) / px
    start = None
    for _ in range(4):
        start = _pick_arc(a, rng, span)
        if start is not None:
            break
        span *= 0.7
    if start is None:
        raise ValueError(f"no stretch of inner table long enough for a {kind} bleed")
    inside, u = _sector(a.angle, start, span)
    wobble = 1.0 + 0.12 * _smooth_noise(rng, a.angle.shape, 12.0)
    if kind == "subdural":
        profile = np.sin(np.pi * u) ** 0.55
        hu = rng.uniform(35.0, 45.0) if rng.random() < 0.15 else rng.uniform(50.0, 80.0)
    else:
        profile = np.sqrt(np.clip(1.0 - (2.0 * u - 1.0) ** 2, 0.0, 1.0))
        hu = rng.uniform(*HU_RANGES["epidural"])
    shape = a.cavity & inside & (a.table_dist <= thick * profile * wobble) & (a.table_dist > 0)
    shape = ndimage.binary_opening(shape)
    if shape.sum() < 20:
        raise ValueError(f"the {kind} bleed came out empty on this slice")
    return shape, float(hu), None


def _subarachnoid(
    a: Anatomy, rng: np.random.Generator, px: float
) -> tuple[np.ndarray, float, None]:
    thin = _thin_csf(a)
    for _ in range(8):
        if rng.random() < 0.6:
            span = float(rng.uniform(40.0, 110.0))
            start = float(rng.uniform(0.0, 360.0))
            inside, _u = _sector(a.angle, start, span)
            region = thin & inside & (a.table_dist <= rng.uniform(10.0, 25.0) / px)
        else:
            deep = np.flatnonzero((thin & (a.table_dist >= 15.0 / px)).ravel())
            if deep.size == 0:
                continue
            cy, cx = np.unravel_index(int(deep[int(rng.integers(deep.size))]), thin.shape)
            yy, xx = np.ogrid[: thin.shape[0], : thin.shape[1]]
            rad = rng.uniform(15.0, 30.0) / px
            region = thin & ((yy - cy) ** 2 + (xx - cx) ** 2 <= rad * rad)
        if region.sum() >= 30:
            return region, float(rng.uniform(*HU_RANGES["subarachnoid"])), None
    raise ValueError("no sulcal or cisternal CSF to fill with subarachnoid blood")


def _intraventricular(
    a: Anatomy, rng: np.random.Generator, px: float
) -> tuple[np.ndarray, float, None]:
    lab, n = ndimage.label(a.ventricles)
    if n == 0:
        raise ValueError("no ventricles on this slice for intraventricular blood")
    sizes = np.bincount(lab.ravel())[1:].astype(float)
    order = rng.choice(
        n, size=min(n, int(rng.integers(1, 3))), replace=False, p=sizes**2 / (sizes**2).sum()
    )
    shape = np.zeros(a.ventricles.shape, bool)
    rows = np.arange(len(shape))[:, None]
    for k in order:
        comp = lab == k + 1
        ys = np.flatnonzero(comp.any(axis=1))
        height = ys[-1] - ys[0] + 1
        if rng.random() < 0.15:
            shape |= comp  # a cast: the whole ventricle full of blood
            continue
        level = ys[-1] - max(3.0, rng.uniform(0.2, 0.7) * height)
        shape |= comp & (rows >= level)
    if shape.sum() < 15:
        raise ValueError("the ventricles are too small for a visible fluid level")
    return shape, float(rng.uniform(*HU_RANGES["intraventricular"])), None


_PAINTERS = {
    "intraparenchymal": _intraparenchymal,
    "subarachnoid": _subarachnoid,
    "intraventricular": _intraventricular,
}


# --------------------------------------------------------------------------- synthesis


def synthesize(
    hu: np.ndarray,
    rng: np.random.Generator | int,
    *,
    kind: str | None = None,
    pixel_mm: float = DEFAULT_PIXEL_MM,
    clipped: bool | None = None,
    anatomy: Anatomy | None = None,
) -> SyntheticBleed:
    """Paint one acute bleed of ``kind`` (or of a kind drawn from those the slice allows) into
    a NORMAL slice and return the new HU, the blood mask and the six labels.

    ``hu``: one 2-D slice in HU, full range (DICOM) or 0–80 HU (brain-window PNG; recognised
    when nothing exceeds 80.5 HU unless ``clipped`` says otherwise — the output then stays in
    0–80 on the PNG's 8-bit grid). ``rng``: a Generator or a seed; the same seed on the same
    slice gives an identical result. ``pixel_mm``: in-plane pixel size, which sets the sizes.
    ``anatomy``: ``find_anatomy`` of this very slice, when the caller already has it (it is
    the costly part; passing it saves recomputing it).

    Raises ValueError, naming why, when the slice is unusable (``usable(hu)`` is False: skull
    base or top of head) or when ``kind`` cannot be placed on it (``feasible_kinds``); it never
    returns None.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    rng = np.random.default_rng(rng)
    x = np.asarray(hu, dtype=np.float32)
    a = anatomy if anatomy is not None else find_anatomy(x, clipped=clipped, pixel_mm=pixel_mm)
    if a.brain.shape != x.shape:
        raise ValueError(f"anatomy of shape {a.brain.shape} given for a slice of {x.shape}")
    if not a.usable:
        raise ValueError(f"slice unusable for synthesis: {a.reason}")
    if kind is None:
        options = feasible_kinds(a)
        if not options:
            raise ValueError("no kind of bleed fits this slice")
        kind = options[int(rng.integers(len(options)))]
    if kind in ("subdural", "epidural"):
        shape, blood_hu, edema = _extra_axial(a, rng, pixel_mm, kind)
    else:
        shape, blood_hu, edema = _PAINTERS[kind](a, rng, pixel_mm)
    new, fill = _render(x, shape, blood_hu, kind, edema, a, rng)
    altered = new != x
    labels = np.zeros(len(LABELS), dtype=np.float32)
    if shape.any():
        labels[0] = 1.0
        labels[LABELS.index(kind)] = 1.0
    return SyntheticBleed(hu=new, mask=shape, altered=altered, labels=labels, kind=kind, fill=fill)


def _render(
    x: np.ndarray,
    shape: np.ndarray,
    blood_hu: float,
    kind: str,
    edema: np.ndarray | None,
    a: Anatomy,
    rng: np.random.Generator,
    *,
    varied: bool = True,
) -> tuple[np.ndarray, float]:
    """Blend blood into ``x``: fraction 1 inside ``shape`` (or the through-plane ``fill`` it
    returns beside the new HU), a partial-volume fall-off just outside (never onto bone), blood
    density varying smoothly, plus the slice's own noise. ``varied=False`` (the 3-D phantom,
    whose slices already cut through its ends): the sharpest edge, full fill, the least
    variation, and nothing drawn for them."""
    lo, hi = HU_RANGES[kind]
    sigma, fill, variation = PV_SIGMA_PX_RANGE[0], 1.0, 4.0
    if varied:
        sigma = float(rng.uniform(*PV_SIGMA_PX_RANGE))
        if kind != "subarachnoid" and rng.random() < THROUGH_PLANE_SHARE:
            fill = float(rng.uniform(*FILL_RANGE))
        variation = float(rng.uniform(*VARIATION_HU_RANGE))
    frac = ndimage.gaussian_filter(shape.astype(np.float32), sigma)
    frac = np.where(shape, np.float32(1.0), np.minimum(frac, np.float32(0.5)))
    frac[(frac < _PV_FLOOR) | (a.skull & ~shape)] = 0.0
    frac[~ndimage.binary_dilation(shape, np.ones((3, 3), bool), iterations=PV_RIM_PX)] = 0.0
    frac *= np.float32(fill)

    varying = blood_hu + variation * _smooth_noise(rng, x.shape, 4.0)
    blood = np.clip(varying, lo, hi) + a.noise_sigma * _smooth_noise(rng, x.shape, 0.6)
    base = x
    if edema is not None:
        target = rng.uniform(15.0, 25.0)
        mean = ndimage.gaussian_filter(x, 2.0)
        base = x - edema * np.maximum(mean - np.float32(target), 0.0)
    out = base + frac * (blood - base)
    if np.issubdtype(np.asarray(x).dtype, np.integer) or np.all(x == np.round(x)):
        out = np.round(out)
    if a.clipped:
        out = np.clip(out, 0.0, 80.0)
        step = np.float32(80.0 / 255.0)
        grid = np.abs(x / step - np.round(x / step)) < 1e-3
        if grid.all():
            out = np.round(out / step) * step
    out = out.astype(np.float32)
    # Pixels outside the blood's reach keep their exact input value (no float drift).
    touched = (frac > 0) | (edema > 0 if edema is not None else False)
    return np.where(touched, out, x).astype(np.float32), fill


# --------------------------------------------------------------------------- 3-D phantom


@dataclass(frozen=True)
class PhantomBleed:
    """A whole series with one ellipsoidal hematoma of known volume painted in: ``hu`` (T, H, W)
    float32, ``mask`` bool (T, H, W), ``volume_ml`` the ellipsoid's analytic volume times the
    share of its pixels that lie inside the skull (all of them unless it is large)."""

    hu: np.ndarray
    mask: np.ndarray
    volume_ml: float


def ellipsoid_bleed(
    hu: np.ndarray,
    z: np.ndarray,
    pixel_mm: tuple[float, float],
    volume_ml: float,
    rng: np.random.Generator | int,
    *,
    blood_hu: float = 65.0,
    elongation: tuple[float, float, float] = (1.3, 1.0, 0.8),
) -> PhantomBleed:
    """Paint an intraparenchymal hematoma of ``volume_ml`` (an ellipsoid with semi-axes in the
    ratio ``elongation`` (rows, cols, patient axis)) into a normal series, slice by slice.

    Why: the only real outlines here cover one study, so the volume is also checked on bleeds
    whose true volume is known by construction, in a real head (its anatomy, noise and slice
    spacing). The centre is the deepest brain point of the slice at mid-height of the brain,
    so the bleed lies in parenchyma; each slice gets the ellipsoid's cross-section at its
    ``z`` (mm along the patient axis), with a partial-volume edge and the slice's own noise, as
    ``synthesize`` paints its blobs.
    """
    rng = np.random.default_rng(rng)
    x = np.asarray(hu, dtype=np.float32)
    z = np.asarray(z, dtype=np.float64)
    if x.ndim != 3 or len(z) != len(x):
        raise ValueError(f"a series (T, H, W) with one z per slice, got {x.shape} and {z.shape}")
    k = np.asarray(elongation, dtype=np.float64)
    scale = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi * float(np.prod(k)))) ** (1.0 / 3.0)
    ay, ax, az = (k * scale).tolist()
    px = float(np.sqrt(pixel_mm[0] * pixel_mm[1]))
    usable_slices = [i for i in range(len(x)) if find_anatomy(x[i], pixel_mm=px).usable]
    if not usable_slices:
        raise ValueError("no slice of this series shows enough brain for a phantom bleed")
    mid = usable_slices[len(usable_slices) // 2]
    a = find_anatomy(x[mid], pixel_mm=px)
    depth = ndimage.distance_transform_edt(a.brain & ~a.ventricles)
    cy, cx = np.unravel_index(int(np.argmax(depth)), depth.shape)
    cz = float(z[mid])
    yy, xx = np.mgrid[: x.shape[1], : x.shape[2]].astype(np.float64)
    dy, dx = (yy - cy) * pixel_mm[0], (xx - cx) * pixel_mm[1]
    out = x.copy()
    mask = np.zeros(x.shape, dtype=bool)
    whole = 0  # the ellipsoid's pixels before it is kept inside the skull
    for i in range(len(x)):
        rest = 1.0 - ((float(z[i]) - cz) / az) ** 2
        if rest <= 0:
            continue
        shape = (dy / ay) ** 2 + (dx / ax) ** 2 <= rest
        if not shape.any():
            continue
        anatomy = find_anatomy(x[i], pixel_mm=px)
        whole += int(shape.sum())
        # A hematoma lies inside the skull: the part of a large ellipsoid that would reach the
        # inner table is left out, and so is its partial-volume rim (blending bone into blood
        # would open the skull's ring, which no real bleed does).
        shape &= ndimage.binary_erosion(anatomy.cavity, iterations=PV_RIM_PX + 1)
        mask[i] = shape
        out[i] = _render(
            x[i], shape, blood_hu, "intraparenchymal", None, anatomy, rng, varied=False
        )[0]
    inside = float(mask.sum()) / whole if whole else 0.0
    volume = 4.0 / 3.0 * np.pi * ay * ax * az / 1000.0 * inside
    return PhantomBleed(hu=out, mask=mask, volume_ml=float(volume))
