"""Which way the patient lies on a slice as shown: the letters a viewer writes at the image's
edges (R/L, A/P, H/F), from the series' ImageOrientationPatient.

DICOM's patient axes (LPS) point to the patient's Left, Posterior and Head. A slice is shown as
acquired (row 0 at the top, column 0 at the left), so the image's right edge lies along the row
direction (ImageOrientationPatient's first three numbers) and its bottom edge along the column
direction (the last three). For a standard axial slice (1, 0, 0, 0, 1, 0) that puts the
patient's right on the image's left and anterior at the top: the radiological convention, seen
from the feet. Nothing is flipped to get there: the letters say what the pixels are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: (letter for +axis, letter for -axis) of the LPS patient axes x, y, z.
_AXES = (("L", "R"), ("P", "A"), ("H", "F"))

#: A component smaller than this (the sine of about 6°) adds no letter: a scanner's rounding
#: noise or a trace of tilt would otherwise print "PF" where every reader expects "P". Larger
#: ones follow the dominant letter, as OHIF writes an oblique edge ("PF", "AH").
SECONDARY = 0.1

NOT_RECORDED = "orientation not recorded"


@dataclass(frozen=True)
class EdgeMarkers:
    """The patient direction at each edge of the image as shown: ``left`` is the letter a
    viewer writes at the middle of the image's left edge."""

    top: str
    bottom: str
    left: str
    right: str


def direction_letters(vector: Sequence[float] | np.ndarray) -> str:
    """The patient direction a vector in LPS points to, dominant axis first.

    >>> direction_letters((1, 0, 0))
    'L'
    >>> direction_letters((0, -1, 0))
    'A'
    >>> direction_letters((0.0, 0.968148, -0.25038))
    'PF'
    >>> direction_letters((0.0, 0.999, 0.04))
    'P'
    """
    v = np.asarray(vector, dtype=float)
    norm = float(np.linalg.norm(v))
    if v.shape != (3,) or norm == 0.0:
        raise ValueError(f"expected a non-zero 3-vector, got {tuple(vector)}")
    v = v / norm
    order = sorted(range(3), key=lambda i: -abs(v[i]))
    letters = [
        _AXES[i][0 if v[i] > 0 else 1]
        for rank, i in enumerate(order)
        if rank == 0 or abs(v[i]) >= SECONDARY
    ]
    return "".join(letters)


def edge_markers(orientation: Sequence[float] | None) -> EdgeMarkers | None:
    """The four edge letters of a slice shown as acquired, or None when the series records
    no (or a degenerate) ImageOrientationPatient: then say :data:`NOT_RECORDED`, never guess.

    >>> edge_markers((1, 0, 0, 0, 1, 0))
    EdgeMarkers(top='A', bottom='P', left='R', right='L')
    >>> edge_markers((0, 1, 0, 0, 0, -1))  # a sagittal slice
    EdgeMarkers(top='H', bottom='F', left='A', right='P')
    >>> edge_markers(None) is None
    True
    """
    if orientation is None or len(orientation) != 6:
        return None
    row = np.asarray(orientation[:3], dtype=float)  # towards increasing column: image right
    col = np.asarray(orientation[3:], dtype=float)  # towards increasing row: image bottom
    if not np.linalg.norm(row) or not np.linalg.norm(col):
        return None
    return EdgeMarkers(
        top=direction_letters(-col),
        bottom=direction_letters(col),
        left=direction_letters(-row),
        right=direction_letters(row),
    )
