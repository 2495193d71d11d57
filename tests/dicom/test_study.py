"""core.dicom.study on the 17 real RSNA studies: counts, order, HU scale, metadata,
de-identification."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import edit, zip_bytes

from core.dicom.study import Series, Study, load_studies


def _brain_mode(series: Series) -> int:
    """Most frequent HU of soft tissue (15..100 HU) over the middle third of the head.

    The lower bound leaves out CSF, which dominates in hydrocephalus (ID_4fef99f0df)."""
    n = series.n_slices
    mid = series.hu[n // 3 : max(2 * n // 3, n // 3 + 1)]
    values = mid[(mid >= 15) & (mid <= 100)].astype(np.int64)
    return int(np.argmax(np.bincount(values - 15))) + 15


def _air_median(series: Series) -> float:
    """Median HU of the image's top rows: air above the head, inside or outside the scan circle."""
    return float(np.median(series.hu[:, 5:40, 150:360]))


@pytest.fixture(scope="module")
def all_studies(study_zips: list[Path], unlabelled_zip: Path) -> dict[str, Study]:
    loaded: dict[str, Study] = {}
    for path in [*study_zips, unlabelled_zip]:
        studies = load_studies(path)
        assert len(studies) == 1, f"{path.name} should hold one study"
        loaded[path.stem] = studies[0]
    return loaded


def test_seventeen_studies_load(all_studies: dict[str, Study]) -> None:
    assert len(all_studies) == 17
    assert sum(s.default_series.n_slices for s in all_studies.values()) == 549 + 32


def test_slice_counts_and_order_match_the_label_csv(all_studies, label_rows) -> None:
    checked = 0
    for study in all_studies.values():
        rows = label_rows.get(study.study_instance_uid)
        if rows is None:
            continue  # the unlabelled study
        series = study.default_series
        assert series.series_instance_uid == rows[0]["SeriesInstanceUID"]
        assert series.n_slices == len(rows), study.study_instance_uid
        assert [s.sop_instance_uid for s in series.slices] == [r["image_id"] for r in rows]
        csv_z = np.array([float(r["ImagePositionPatient_z"]) for r in rows])
        got_z = np.array([s.position[2] for s in series.slices])
        np.testing.assert_allclose(got_z, csv_z, atol=1e-3)
        checked += 1
    assert checked == 16


def test_unlabelled_tilted_study_sorts_along_the_normal(all_studies) -> None:
    series = all_studies["ID_4d28912ba6"].default_series
    assert series.n_slices == 32
    assert series.tilt_deg == pytest.approx(11.0, abs=0.1)
    z = np.array([s.z for s in series.slices])
    assert np.all(np.diff(z) > 0)
    assert series.spacing == pytest.approx(5.0, abs=0.05)


def test_air_and_brain_read_in_hounsfield_units(all_studies) -> None:
    for name, study in all_studies.items():
        series = study.default_series
        assert series.hu.dtype == np.int16
        assert -1030 <= _air_median(series) <= -900, name
        assert 20 <= _brain_mode(series) <= 45, name


def test_12bit_unsigned_and_16bit_signed_studies_share_one_hu_scale(study_zips) -> None:
    kinds: dict[tuple[int, int], list[int]] = {}
    for path in study_zips:
        with zipfile.ZipFile(path) as zf:
            first = zf.infolist()[0]
            ds = pydicom.dcmread(io.BytesIO(zf.read(first)), stop_before_pixels=True)
        kind = (int(ds.BitsStored), int(ds.PixelRepresentation))
        kinds.setdefault(kind, []).append(_brain_mode(load_studies(path)[0].default_series))
    assert (12, 0) in kinds and (16, 1) in kinds, f"expected both pixel formats, got {list(kinds)}"
    unsigned, signed = np.median(kinds[(12, 0)]), np.median(kinds[(16, 1)])
    assert abs(unsigned - signed) <= 8, kinds


def test_hu_array_is_contiguous_read_only_and_hashed(small_zip) -> None:
    series = load_studies(small_zip)[0].default_series
    assert series.hu.flags.c_contiguous and not series.hu.flags.writeable
    with pytest.raises(ValueError):
        series.hu[0, 0, 0] = 0
    again = load_studies(small_zip)[0].default_series
    assert series.pixel_hash == again.pixel_hash and len(series.pixel_hash) == 64


def test_metadata_is_kept_and_identity_masked_by_default(unlabelled_zip) -> None:
    study = load_studies(unlabelled_zip)[0]
    series = study.default_series
    assert study.patient_id == "ID_52c1ab5a"
    assert series.pixel_spacing == pytest.approx((0.48828125, 0.48828125))
    assert series.orientation is not None and series.modality == "CT"
    assert "52c1ab5a" not in repr(study)
    assert "52c1ab5a" not in " ".join(study.warnings + series.warnings)


def test_bytes_and_zip_path_give_the_same_study(small_zip) -> None:
    a = load_studies(small_zip)[0].default_series
    b = load_studies(small_zip.read_bytes())[0].default_series
    assert a.pixel_hash == b.pixel_hash
    assert [s.sop_instance_uid for s in a.slices] == [s.sop_instance_uid for s in b.slices]


def test_real_series_keeps_what_a_seg_or_sr_must_reference():
    """A DICOM SEG or SR written for a real study names the source images' SOP class and the
    series' frame of reference; the loader must keep both. RSNA's de-identified files keep the
    class only in the file meta and have no frame of reference (the writers must make one)."""
    from data_paths import UNLABELLED_ZIP, require

    study = load_studies(require(UNLABELLED_ZIP))[0]
    series = study.default_series
    assert {s.sop_class_uid for s in series.slices} == {"1.2.840.10008.5.1.4.1.1.2"}
    assert series.frame_of_reference_uid == ""

    def with_frame(ds: pydicom.Dataset) -> None:
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.77"

    with zipfile.ZipFile(UNLABELLED_ZIP) as zf:
        files = [(n, edit(zf.read(n), with_frame)) for n in zf.namelist()[:3]]
    series = load_studies(zip_bytes(files))[0].default_series
    assert series.frame_of_reference_uid == "1.2.826.0.1.3680043.8.498.77"
