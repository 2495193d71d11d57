"""core.review.monitoring: time order and hematoma expansion, on real slices with a phantom
bleed."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pytest

from core.dicom.study import Series, load_studies
from core.imaging.volume import estimate_bleed
from core.review.monitoring import (
    TimePoint,
    acquired_at,
    changes,
    group_by_patient,
    timeline,
)

NEGATIVE = "ID_0e5e6bc3c1"  # a real study without hemorrhage


def _with_bleed(series: Series, radii_mm: tuple[float, float, float]) -> tuple[Series, list[int]]:
    """The real series with an ellipsoid of 70 HU (acute blood) in the middle of the brain."""
    hu = series.hu.copy()
    n, rows, cols = hu.shape
    py, px = series.pixel_spacing
    z = np.array([s.z for s in series.slices])
    zc = z[n // 2 + 2]
    yy, xx = np.mgrid[:rows, :cols].astype(float)
    yy, xx = (yy - rows / 2) * py, (xx - cols / 2) * px
    touched = []
    for k in range(n):
        e = (yy / radii_mm[0]) ** 2 + (xx / radii_mm[1]) ** 2 + ((z[k] - zc) / radii_mm[2]) ** 2
        if (e <= 1).any():
            hu[k][e <= 1] = 70
            touched.append(k)
    return dataclasses.replace(series, hu=hu), touched


def _volume(series: Series, flagged: list[int]) -> float:
    z = [s.z for s in series.slices]
    return estimate_bleed(series.hu, z, series.pixel_spacing, flagged).volume_ml


@pytest.fixture(scope="module")
def real_series(study_zips: list[Path]) -> Series:
    path = next(p for p in study_zips if p.stem == NEGATIVE)
    return load_studies(path)[0].default_series


def test_enlarged_phantom_bleed_on_real_slices_is_expansion(real_series: Series) -> None:
    first, f1 = _with_bleed(real_series, (15, 12, 10))
    second, f2 = _with_bleed(real_series, (20, 16, 12))
    v1, v2 = _volume(first, f1), _volume(second, f2)
    assert 4.0 < v1 < v2
    t1 = TimePoint("1.2.1", datetime(2026, 1, 1, 8, 0), 0.9, v1)
    t2 = TimePoint("1.2.2", datetime(2026, 1, 1, 14, 0), 0.95, v2)
    (change,) = changes([t2, t1])  # given out of order
    assert change.before is t1 and change.after is t2
    assert change.expansion and change.growth_ml == pytest.approx(v2 - v1)
    assert change.hours == 6.0


def test_unchanged_phantom_bleed_is_not_expansion(real_series: Series) -> None:
    first, f1 = _with_bleed(real_series, (15, 12, 10))
    v1 = _volume(first, f1)
    v2 = _volume(first, f1)
    (change,) = changes(
        [
            TimePoint("a", datetime(2026, 1, 1, 8), 0.9, v1),
            TimePoint("b", datetime(2026, 1, 2, 8), 0.9, v2),
        ]
    )
    assert not change.expansion and change.growth_ml == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (10.0, 13.4, True),  # +34 %
        (10.0, 13.2, False),  # +32 %, +3.2 mL
        (30.0, 36.0, True),  # +20 % but +6 mL
        (0.3, 0.6, False),  # doubling of a speck: below the relative rule's floor
        (20.0, 10.0, False),  # shrinking
    ],
)
def test_expansion_definition(before: float, after: float, expected: bool) -> None:
    a = TimePoint("a", datetime(2026, 1, 1), None, before)
    b = TimePoint("b", datetime(2026, 1, 2), None, after)
    assert changes([a, b])[0].expansion is expected


def test_missing_volume_is_never_expansion_and_undated_studies_go_last() -> None:
    a = TimePoint("a", None, 0.5, 5.0)
    b = TimePoint("b", datetime(2026, 1, 2), 0.5, None)
    c = TimePoint("c", datetime(2026, 1, 1), 0.5, 5.0)
    assert [p.study_instance_uid for p in timeline([a, b, c])] == ["c", "b", "a"]
    assert not any(ch.expansion for ch in changes([a, b, c]))


def test_acquired_at_and_grouping() -> None:
    assert acquired_at(date(2026, 3, 4), "081530.123") == datetime(2026, 3, 4, 8, 15, 30)
    assert acquired_at(date(2026, 3, 4), "") == datetime(2026, 3, 4)
    assert acquired_at(None, "0815") is None
    groups = group_by_patient({"s1": "P1", "s2": "P1", "s3": "P2", "s4": ""})
    assert groups == {"P1": ["s1", "s2"]}
