"""Edge letters from ImageOrientationPatient, on the real series as well as by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.dicom.study import load_studies
from core.imaging.orientation import direction_letters, edge_markers


def test_standard_axial_is_radiological() -> None:
    """Seen from the feet: the patient's right on the image's left, anterior at the top."""
    m = edge_markers((1, 0, 0, 0, 1, 0))
    assert m is not None and (m.left, m.right, m.top, m.bottom) == ("R", "L", "A", "P")


def test_a_flipped_acquisition_is_said_as_it_is() -> None:
    """Rows running right-to-left (neurological display): the letters swap, nothing is hidden."""
    m = edge_markers((-1, 0, 0, 0, 1, 0))
    assert m is not None and (m.left, m.right) == ("L", "R")


def test_coronal_and_oblique() -> None:
    m = edge_markers((1, 0, 0, 0, 0, -1))
    assert m is not None and (m.top, m.bottom, m.left, m.right) == ("H", "F", "R", "L")
    # 30° about the x axis: the column direction is mostly posterior, partly towards the feet.
    assert direction_letters((0, 0.866, -0.5)) == "PF"


@pytest.mark.parametrize("bad", [None, (), (1, 0, 0), (0, 0, 0, 0, 1, 0)])
def test_missing_or_degenerate_orientation_gives_no_letters(bad) -> None:
    assert edge_markers(bad) is None


def test_every_real_series_gets_letters_with_r_on_the_left(study_zips: list[Path]) -> None:
    """The 16 labelled studies are axial head CTs with ImageOrientationPatient recorded."""
    for path in study_zips[:4]:
        for study in load_studies(path):
            m = edge_markers(study.default_series.orientation)
            assert m is not None, path.name
            assert (m.left, m.right) == ("R", "L") and m.top.startswith("A"), (path.name, m)
