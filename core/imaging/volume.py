"""Where the bleed is and how large: a hemorrhage mask and its volume.

Two sources of the mask. The first is the model's own bleed map (core.model.bleed_map, a
segmentation head trained on synthetic bleeds with their masks): its probability, resized to
the slice's grid, above the card's threshold, inside the skull, small specks removed
(``mask_from_bleed_map``). The second, a fallback for a model without that head, is a density
rule: acute blood is denser than brain (about 50–90 HU against 20–45), so on the slices the
classifier flags, the candidate mask is the blood-density voxels inside the skull, kept as
connected regions of a plausible size and, when a Grad-CAM map is given, only where the map of
the flagged label is high (``estimate_bleed``).

Volume = Σ over slices of (voxels × pixel area × that slice's own extent along the patient
axis): half the gap to the slice before plus half the gap to the slice after, so a series with
2.7 mm slices below and 5.4 mm above (or with gaps, or thickness ≠ spacing) is measured as it
was acquired (``slice_extents``). The clinical ABC/2 estimate (Kothari 1996) is given beside
it, so a reader can compare with what they would measure by hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

#: Acute blood in HU (clotted blood ~ 60–80; calcification and bone lie above).
BLOOD_HU = (50.0, 90.0)
#: Bone: anything this dense is skull (or calcification), never blood.
BONE_HU = 300.0
#: Distance kept from bone (mm): partial volume at the skull's inner table mimics blood.
BONE_MARGIN_MM = 2.0
#: Smallest candidate region kept (mm² on one slice): smaller specks are noise or vessels.
MIN_REGION_MM2 = 20.0
#: Blood must also stand this far (HU) above the slice's median brain density: scanners and
#: beam hardening shift normal brain by 10-20 HU, which pushes its noisy tail past 50.
ABOVE_BRAIN_HU = 22.0
#: Share of a slice's Grad-CAM maximum a region must reach to be kept.
CAM_KEEP = 0.5

#: How the fallback's method begins: a reader must see it is not the model's outline.
FALLBACK_PREFIX = "fallback for a model without a bleed map: "
METHOD = FALLBACK_PREFIX + (
    f"voxels of {BLOOD_HU[0]:.0f}–{BLOOD_HU[1]:.0f} HU (and ≥ {ABOVE_BRAIN_HU:.0f} HU above the "
    f"slice's median brain) inside the skull (>{BONE_MARGIN_MM:.0f} mm "
    f"from bone), regions ≥ {MIN_REGION_MM2:.0f} mm² where the Grad-CAM is high, on the "
    "slices the model flags; Σ area × each slice's own extent along the patient axis"
)
ABC2_METHOD = (
    "ABC/2 (Kothari 1996): A, B on the slice where the bleed is largest, C = slices × spacing"
)
ESTIMATE_NOTICE = "An estimate from density rules and the model's heatmap, not a segmentation."
#: For volumes over time (each from its study's outline).
VOLUME_NOTICE = "Each volume is measured on its study's outline: check the outlines first."

#: Default share of the bleed map's probability from which a pixel is blood (the card's
#: calibration may give its own, chosen on validation slices).
MAP_THRESHOLD = 0.5
#: The map's outline is refined by density: the map is coarse (one value per 4 × 4 model
#: pixels, ~6 mm on a head), so it overshoots small bleeds and, blurred at the edge, cuts large
#: ones short. Where the map is at least MAP_ZONE, blood-density pixels (≥ REFINE_MIN_HU and
#: ≥ REFINE_ABOVE_BRAIN_HU above the slice's median brain, ≤ REFINE_MAX_HU) that connect to the
#: map's own outline make the mask. Chosen on phantoms of known volume (5, 20 and 60 mL in three
#: normal studies: all within 4 %, against +126 % to +157 % for 5 mL from the map alone) and on
#: normal studies (no region grows from nothing: a seed from the map is needed); the
#: hand-drawn masks only report.
MAP_ZONE = 0.1
REFINE_MIN_HU = 45.0
REFINE_ABOVE_BRAIN_HU = 10.0
REFINE_MAX_HU = 100.0


@dataclass(frozen=True)
class DensityRule:
    """Which pixels near the map's outline count as blood: at least ``floor_hu`` and at least
    ``above_brain_hu`` above the slice's median brain (and at most REFINE_MAX_HU).

    Why it is a choice and not a constant: the map says where, the density says how far, and
    how pale a pixel may be and still be blood depends on what the map was taught. A model
    trained only on dense synthetic bleeds is refined with the dense rule (the default, as
    models without this calibration were measured); one taught the pale end slices of bleeds
    (through-plane partial volume) gets its rule chosen with its map threshold on synthetic
    bleeds in validation slices (``core.calibrate``), stored in its card."""

    floor_hu: float = REFINE_MIN_HU
    above_brain_hu: float = REFINE_ABOVE_BRAIN_HU

    def to_dict(self) -> dict[str, float]:
        return {"floor_hu": self.floor_hu, "above_brain_hu": self.above_brain_hu}

    @classmethod
    def from_dict(cls, value: object) -> DensityRule | None:
        """The rule a card's calibration gives, or None when it gives none or one out of the
        plausible range (blood is never below 30 HU, nor need it be 30 HU above brain)."""
        if not isinstance(value, dict):
            return None
        numbers = [value.get("floor_hu"), value.get("above_brain_hu")]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
            return None
        floor, above = (float(v) for v in numbers)  # type: ignore[arg-type]
        if not (30.0 <= floor <= 80.0 and 0.0 <= above <= 30.0):
            return None
        return cls(floor, above)


#: The dense rule every model was refined with before rules were calibrated.
DENSE = DensityRule()
#: The rules a calibration chooses among, densest first: the pale end of a bleed on a 5 mm
#: slice reads 38–48 HU on ID_286f17f9e7's hand-drawn masks, grey matter ~35–42.
DENSITY_RULES: tuple[DensityRule, ...] = (DENSE, DensityRule(40.0, 6.0), DensityRule(36.0, 3.0))

MAP_METHOD = (
    "the model's bleed map (segmentation head) ≥ {threshold:.2f}, resized to the slice, inside "
    f"the skull (>{BONE_MARGIN_MM:.0f} mm from bone), refined by density: pixels of "
    "{floor:.0f}–" + f"{REFINE_MAX_HU:.0f} HU (and ≥ " + "{above:.0f} HU above the "
    f"slice's median brain) where the map is ≥ {MAP_ZONE:.2f}, connected to that outline; "
    f"regions ≥ {MIN_REGION_MM2:.0f} mm²; Σ area × each slice's own extent along the patient axis"
)
MAP_NOTICE = (
    "Outline and volume from the model's bleed map, trained on synthetic bleeds; its agreement "
    "with hand-drawn outlines is on the model card. Check the outline before using the volume."
)


@dataclass(frozen=True, eq=False)
class BleedEstimate:
    """A candidate mask (slices, rows, cols) on one series and what it measures."""

    mask: np.ndarray  # bool (T, H, W), series order; False on slices not flagged
    flagged: tuple[int, ...]  # series indices of the slices examined
    area_mm2: tuple[float, ...]  # per slice of the series (0 where not flagged)
    volume_ml: float
    abc2_ml: float
    slice_spacing_mm: float
    pixel_area_mm2: float
    threshold: float | None = None  # P(any) from which slices were flagged, when known
    method: str = METHOD
    abc2_method: str = ABC2_METHOD
    notice: str = ESTIMATE_NOTICE

    @property
    def scope(self) -> str:
        """Which slices the mask was looked for on, in words."""
        if self.threshold is None:
            return f"{len(self.flagged)} slice(s) with blood in the map"
        return f"{len(self.flagged)} slice(s) with P(any) ≥ {self.threshold:.2f}"

    def to_dict(self) -> dict[str, object]:
        return {
            "volume_ml": round(self.volume_ml, 2),
            "abc2_ml": round(self.abc2_ml, 2),
            "method": self.method,
            "abc2_method": self.abc2_method,
            "notice": self.notice,
            "slice_spacing_mm": round(self.slice_spacing_mm, 3),
            "flag_threshold_p_any": self.threshold,
            "flagged_slices": list(self.flagged),
        }


def slice_spacing(z: Sequence[float]) -> float:
    """Spacing between slices (mm) from their positions: the median step (gaps do not count)."""
    zs = np.asarray(z, dtype=np.float64)
    if zs.size < 2:
        return 0.0
    steps = np.abs(np.diff(zs))
    steps = steps[steps > 1e-3]
    return float(np.median(steps)) if steps.size else 0.0


def slice_extents(z: Sequence[float]) -> np.ndarray:
    """Each slice's own extent along the patient axis (mm): half the step to the slice before
    plus half the step to the one after (the end slices count their one neighbour's step twice
    over, i.e. a whole step). With mixed spacing each part of the series is measured with its
    own; a single slice has no extent (0).

    >>> slice_extents([0.0, 2.7, 5.4, 10.8, 16.2]).round(2).tolist()
    [2.7, 2.7, 4.05, 5.4, 5.4]
    """
    zs = np.asarray(z, dtype=np.float64)
    if zs.size < 2:
        return np.zeros(zs.size)
    order = np.argsort(zs, kind="stable")
    steps = np.abs(np.diff(zs[order]))
    ext = np.empty(zs.size)
    ext[1:-1] = (steps[:-1] + steps[1:]) / 2
    ext[0], ext[-1] = steps[0], steps[-1]
    out = np.empty(zs.size)
    out[order] = ext
    return out


def intracranial_mask(hu: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Inside the skull and clear of bone: the holes of the bone mask, less a margin. Where
    the skull is open on this slice (skull base, foramina) nothing is filled and the slice has
    no intracranial region, which errs on the side of no candidate."""
    bone = hu >= BONE_HU
    inside = ndimage.binary_fill_holes(bone) & ~bone
    margin = max(1, int(round(BONE_MARGIN_MM / max(pixel_mm, 1e-3))))
    near_bone = ndimage.binary_dilation(bone, iterations=margin)
    return inside & ~near_bone


def candidate_mask(
    hu: np.ndarray, pixel_mm: tuple[float, float], cam: np.ndarray | None = None
) -> np.ndarray:
    """Blood-density regions inside the skull on one slice (bool, same shape as ``hu``)."""
    lo, hi = BLOOD_HU
    inside = intracranial_mask(hu, float(min(pixel_mm)))
    tissue = hu[inside & (hu > 0) & (hu < 100)]
    if tissue.size:
        lo = max(lo, float(np.median(tissue)) + ABOVE_BRAIN_HU)
    blood = inside & (hu >= lo) & (hu <= hi)
    blood = ndimage.binary_opening(blood)  # drop one-pixel lines (vessel walls, falx edges)
    labels, n = ndimage.label(blood)
    if n == 0:
        return blood
    areas = ndimage.sum_labels(blood, labels, index=np.arange(1, n + 1)) * pixel_mm[0] * pixel_mm[1]
    keep = areas >= MIN_REGION_MM2
    if cam is not None and float(cam.max()) > 0:
        peak = ndimage.maximum(cam / float(cam.max()), labels, index=np.arange(1, n + 1))
        keep &= np.asarray(peak) >= CAM_KEEP
    return np.isin(labels, np.flatnonzero(keep) + 1)


def _diameters(region: np.ndarray, pixel_mm: tuple[float, float]) -> tuple[float, float]:
    """Longest diameter A of a region (mm) and its largest extent B perpendicular to A."""
    rows, cols = np.nonzero(outline(region))  # the extremes lie on the border
    pts = np.stack([rows * pixel_mm[0], cols * pixel_mm[1]], axis=1)
    if len(pts) > 3:
        # …and on its convex hull: the exact diameter from a few dozen points (collinear or
        # degenerate regions have no hull: their border points are used as they are)
        with contextlib.suppress(QhullError):
            pts = pts[ConvexHull(pts).vertices]
    d = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1)
    i, j = np.unravel_index(int(d.argmax()), d.shape)
    a = float(d[i, j])
    if a == 0:
        side = float(np.sqrt(pixel_mm[0] * pixel_mm[1]))
        return side, side
    axis = (pts[j] - pts[i]) / a
    normal = np.array([-axis[1], axis[0]])
    proj = pts @ normal
    # + one pixel: extents are measured centre to centre
    pix = float(np.sqrt(pixel_mm[0] * pixel_mm[1]))
    return a + pix, float(proj.max() - proj.min()) + pix


def abc2(mask: np.ndarray, pixel_mm: tuple[float, float], spacing_mm: float) -> float:
    """ABC/2 in mL: A (longest diameter) and B (largest extent perpendicular to A) of the
    largest region on the slice where the mask is largest; C = slices showing the bleed ×
    spacing. (Kothari's half-weighting of small end slices is left out: it is meant for a
    reader's eye; on a mask it shortens C and underestimates even a perfect ellipsoid.) For an
    ellipsoid ABC/2 = (π/6 ≈ 0.52 → 0.5) of A·B·C, about 5 % under the true volume."""
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1).astype(np.float64)
    if areas.max() == 0 or spacing_mm <= 0:
        return 0.0
    k = int(areas.argmax())
    labels, n = ndimage.label(mask[k])
    sizes = ndimage.sum_labels(mask[k], labels, index=np.arange(1, n + 1))
    a, b = _diameters(labels == int(np.argmax(sizes)) + 1, pixel_mm)
    c_slices = float((areas > 0).sum())
    return a * b * c_slices * spacing_mm / 2.0 / 1000.0


def estimate_bleed(
    hu: np.ndarray,
    z: Sequence[float],
    pixel_spacing: tuple[float, float],
    flagged: Sequence[int],
    cams: Mapping[int, np.ndarray] | None = None,
) -> BleedEstimate:
    """The fallback for a model without the bleed map: candidate mask and volume for a series'
    HU stack (T, H, W) on the ``flagged`` slices (series indices), each optionally gated by its
    Grad-CAM map (same grid as the slice)."""
    hu = _stack(hu)
    px = (float(pixel_spacing[0]), float(pixel_spacing[1]))
    mask = np.zeros(hu.shape, dtype=bool)
    chosen = tuple(sorted({int(i) for i in flagged if 0 <= int(i) < hu.shape[0]}))
    for i in chosen:
        mask[i] = candidate_mask(hu[i], px, None if cams is None else cams.get(i))
    return measure(mask, z, px, chosen)


def mask_from_bleed_map(
    hu: np.ndarray,
    bleed_map: np.ndarray,
    pixel_spacing: tuple[float, float],
    threshold: float = MAP_THRESHOLD,
    *,
    within_skull: bool = True,
    rule: DensityRule = DENSE,
) -> np.ndarray:
    """The blood mask (T, H, W) of a series from its bleed map: the map's probabilities
    (T, h, w), on a grid covering the whole slice, are resized to the slice's grid (bilinear, as
    the slice was resized for the model), kept where ≥ ``threshold`` inside the skull, and
    refined by density (``refine_by_density`` with ``rule``), and regions under MIN_REGION_MM2
    are dropped.
    ``within_skull=False`` leaves out the skull test, which needs bone in HU (a 0–80 HU
    brain-window image has none)."""
    hu = _stack(hu)
    bleed_map = np.asarray(bleed_map, dtype=np.float32)
    if bleed_map.ndim != 3 or bleed_map.shape[0] != hu.shape[0]:
        raise ValueError(f"a bleed map {bleed_map.shape} for a series of {hu.shape}")
    px = (float(pixel_spacing[0]), float(pixel_spacing[1]))
    mask = np.zeros(hu.shape, dtype=bool)
    for i in np.flatnonzero(bleed_map.reshape(len(bleed_map), -1).max(axis=1) >= threshold):
        prob = ndimage.zoom(
            bleed_map[i],
            (hu.shape[1] / bleed_map.shape[1], hu.shape[2] / bleed_map.shape[2]),
            order=1,
            grid_mode=True,
            mode="nearest",
        )
        inside = (
            intracranial_mask(hu[i], float(min(px)))
            if within_skull
            else np.ones(prob.shape, dtype=bool)
        )
        seed = (prob >= threshold) & inside
        zone = (prob >= MAP_ZONE) & inside
        blood = refine_by_density(hu[i], seed, zone, inside, full_hu=within_skull, rule=rule)
        labels, n = ndimage.label(blood)
        if n:
            areas = ndimage.sum_labels(blood, labels, index=np.arange(1, n + 1)) * px[0] * px[1]
            blood = np.isin(labels, np.flatnonzero(areas >= MIN_REGION_MM2) + 1)
        mask[i] = blood
    return mask


def refine_by_density(
    hu: np.ndarray,
    seed: np.ndarray,
    zone: np.ndarray,
    inside: np.ndarray,
    full_hu: bool = True,
    rule: DensityRule = DENSE,
) -> np.ndarray:
    """The blood of one slice: blood-density pixels inside ``zone`` (where the map is at least
    MAP_ZONE) in regions that touch ``seed`` (the map's outline at its threshold); blood density
    is judged by ``rule`` against the median brain ``inside`` the skull. A seed pixel
    of brain density is dropped (the map overshoots small bleeds); a dense pixel next to the
    seed is added (it cuts large ones short). ``full_hu=False``: a 0–80 HU brain-window image,
    whose brain median is read inside 0–80 and whose ceiling is its saturation (80 HU). Below,
    a dense block under a taller seed: the block is kept (less its 4 corner pixels, which go
    with the opening that drops one-pixel lines), the seed's brain pixels are not.

    >>> hu = np.full((12, 12), 35.0); hu[3:8, 2:10] = 65.0
    >>> seed = np.zeros((12, 12), bool); seed[1:10, 4:7] = True
    >>> everywhere = np.ones((12, 12), bool)
    >>> blood = refine_by_density(hu, seed, everywhere, everywhere)
    >>> int(blood.sum()), int(blood[3:8, 2:10].sum())
    (36, 36)
    """
    hu = np.asarray(hu, dtype=np.float32)
    tissue = hu[inside & (hu > 0) & (hu < 80)] if full_hu else hu[(hu > 0.5) & (hu < 79.5)]
    brain = float(np.median(tissue)) if tissue.size else 35.0
    low = max(rule.floor_hu, brain + rule.above_brain_hu)
    high = REFINE_MAX_HU if full_hu else 80.01
    dense = ndimage.binary_opening(zone & (hu >= low) & (hu <= high))
    labels, n = ndimage.label(dense)
    if n == 0:
        return dense
    touched = np.unique(labels[seed & dense])
    return np.isin(labels, touched[touched > 0])


def measure(
    mask: np.ndarray,
    z: Sequence[float],
    pixel_spacing: tuple[float, float],
    flagged: Sequence[int] | None = None,
) -> BleedEstimate:
    """Areas, volume (each slice's own extent, see ``slice_extents``) and ABC/2 of a mask
    (T, H, W); ``flagged``: the slices examined (default: those with blood)."""
    px = (float(pixel_spacing[0]), float(pixel_spacing[1]))
    pixel_area = px[0] * px[1]
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1) * pixel_area
    chosen = tuple(np.flatnonzero(areas).tolist()) if flagged is None else tuple(flagged)
    spacing = slice_spacing(z)
    return BleedEstimate(
        mask=mask,
        flagged=chosen,
        area_mm2=tuple(float(a) for a in areas),
        volume_ml=float((areas * slice_extents(z)).sum() / 1000.0),
        abc2_ml=abc2(mask, px, spacing),
        slice_spacing_mm=spacing,
        pixel_area_mm2=pixel_area,
    )


def _stack(hu: np.ndarray) -> np.ndarray:
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"expected a (slices, rows, cols) stack, got shape {hu.shape}")
    return hu


def outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The border of a 2-D mask, ``thickness`` pixels wide (for drawing on the slice)."""
    return mask & ~ndimage.binary_erosion(mask, iterations=max(1, thickness))


#: Outline colour: cyan stands apart from the grey slice and from the heatmap's red-yellow.
OUTLINE_RGB = (0, 230, 255)


def draw_outline(image: np.ndarray, mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """A uint8 grey (H, W) or RGB (H, W, 3) image with the mask's border drawn on it (RGB)."""
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image.copy()
    rgb[outline(mask, thickness)] = OUTLINE_RGB
    return rgb


def outline_layer(mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """The same outline as :func:`draw_outline` on a transparent uint8 RGBA (H, W, 4) layer,
    for a viewer that lays it over the slice and hides it without asking for a new image.

    >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True
    >>> layer = outline_layer(m, 1)
    >>> int((layer[..., 3] == 255).sum()), tuple(layer[1, 1, :3].tolist()), int(layer[2, 2, 3])
    (8, (0, 230, 255), 0)
    """
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[outline(np.asarray(mask, bool), thickness)] = (*OUTLINE_RGB, 255)
    return rgba
