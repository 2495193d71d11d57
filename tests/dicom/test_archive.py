"""Bad and unusual uploads: unsafe zips, damaged files, non-CT content, odd series.

Each test builds a small zip in tmp_path (from a few real RSNA slices where a study is needed)
and checks the message the user would read, not only the exception type.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import Files, edit, read_ds, write_ds, write_zip, zip_bytes
from hostile_inputs import (
    ZEROS_FILLER,
    ZEROS_MEMBERS,
    dicomdir_index,
    mark_encrypted,
    measure,
    photos_zip,
    zeros_zip,
)
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from core.dicom.archive import ArchiveLimits, Member, iter_members
from core.dicom.ct_slice import HEAD_BYTES, RawSlice, Skipped, SkipReason, read_member
from core.dicom.study import Study, load_studies
from core.errors import InputError, NoImagesError, UnsafeArchiveError

STUDY = "ID_1acc4b6d6c"  # 12-bit unsigned, axial, not tilted, ~5 mm apart
OTHER_STUDY = "ID_0e5e6bc3c1"  # 16-bit signed, tilted
N_SLICES = 8  # consecutive slices from the middle of STUDY, in head order


# --------------------------------------------------------------------------- helpers


def _only(studies: list[Study]) -> Study:
    assert len(studies) == 1, f"expected one study, got {len(studies)}"
    return studies[0]


def _all_warnings(study: Study) -> str:
    return "\n".join([*study.warnings, *(w for s in study.series for w in s.warnings)])


def _slices_in_head_order(zip_path: Path, n: int) -> Files:
    """n consecutive slices from the middle of a real study, sorted along z."""
    with zipfile.ZipFile(zip_path) as zf:
        files = [(name, zf.read(name)) for name in zf.namelist() if name.endswith(".dcm")]
    files.sort(key=lambda f: float(read_ds(f[1]).ImagePositionPatient[2]))
    start = (len(files) - n) // 2
    return files[start : start + n]


@pytest.fixture(scope="module")
def zips(study_zips: list[Path]) -> dict[str, Path]:
    return {p.stem: p for p in study_zips}


@pytest.fixture(scope="module")
def series(zips) -> Files:
    """N_SLICES consecutive real slices of STUDY, in head order (member names as in the zip)."""
    return _slices_in_head_order(zips[STUDY], N_SLICES)


@pytest.fixture(scope="module")
def other_series(zips) -> Files:
    return _slices_in_head_order(zips[OTHER_STUDY], 4)


# --------------------------------------------------------------------------- zip safety


def test_zip_bomb_is_rejected(series, tmp_path) -> None:
    files = [*series[:2], ("payload.bin", bytes(50 << 20))]  # 50 MB of zeros, ~50 kB deflated
    path = write_zip(files, tmp_path / "bomb.zip")
    assert path.stat().st_size < 2 << 20
    with pytest.raises(UnsafeArchiveError) as info:
        load_studies(path)
    message = str(info.value)
    assert "zip bomb" in message and "200:1" in message and "rejected" in message


def test_too_many_members(series) -> None:
    files = [(f"slice{i}.dcm", series[0][1]) for i in range(6)]
    with pytest.raises(UnsafeArchiveError) as info:
        load_studies(zip_bytes(files), limits=ArchiveLimits(max_members=5))
    assert "holds 6 files, more than the 5 allowed" in str(info.value)


def test_a_zip_listing_far_more_files_is_refused_before_its_list_is_parsed(monkeypatch) -> None:
    """zipfile builds an object for every entry of the zip's list before any can be counted:
    the list's size, read from the end record, is checked first (1 KiB per allowed member)."""
    import core.dicom.archive as archive

    files = [(f"t{i:04d}.dcm", b"x") for i in range(200)]  # a list of ~11 kB; 5 KiB allowed
    data = zip_bytes(files, zipfile.ZIP_STORED)

    def never(*args, **kwargs):
        raise AssertionError("the zip's list was parsed")

    with monkeypatch.context() as patch:
        patch.setattr(archive.zipfile, "ZipFile", never)
        with pytest.raises(UnsafeArchiveError) as info:
            load_studies(data, limits=ArchiveLimits(max_members=5))
    message = str(info.value)
    assert message.startswith("This zip lists far more files than the 5 allowed for one upload")
    assert message.endswith("it was rejected.")
    # Within its list's budget (199 KiB), the zip is parsed and its files counted.
    with pytest.raises(UnsafeArchiveError, match="holds 200 files, more than the 199 allowed"):
        load_studies(data, limits=ArchiveLimits(max_members=199))


def test_a_single_file_over_the_one_file_limit_is_not_read(tmp_path: Path) -> None:
    """Given as a path or as bytes (the dashboard's way), a file that is not a zip is one
    member: above max_member_bytes it is refused from its size."""
    big = bytes(128) + b"DICM\x02\x00" + bytes(3 << 20)
    path = tmp_path / "big.dcm"
    path.write_bytes(big)
    limits = ArchiveLimits(max_member_bytes=2 << 20)
    for source, name in ((path, "big.dcm"), (big, "upload")):
        with pytest.raises(UnsafeArchiveError) as info:
            load_studies(source, limits=limits)
        assert (
            str(info.value)
            == f"{name} is 3 MB, more than the 2 MB one file may be; it was not read."
        )


def test_total_uncompressed_size_over_limit() -> None:
    files = [(f"part{i}.bin", bytes(1 << 20)) for i in range(3)]  # stored: no ratio to trip
    with pytest.raises(UnsafeArchiveError) as info:
        load_studies(
            zip_bytes(files, zipfile.ZIP_STORED), limits=ArchiveLimits(max_total_bytes=2 << 20)
        )
    assert "would unpack to 3 MB, more than the 2 MB allowed" in str(info.value)


def test_one_member_over_the_per_file_limit(series) -> None:
    files = [*series[:2], ("huge.bin", bytes(3 << 20))]
    with pytest.raises(UnsafeArchiveError) as info:
        load_studies(
            zip_bytes(files, zipfile.ZIP_STORED), limits=ArchiveLimits(max_member_bytes=2 << 20)
        )
    message = str(info.value)
    assert "huge.bin would unpack to 3 MB, more than one file may" in message


def test_member_whose_header_lies_about_its_size(series) -> None:
    """A 50 MB member whose local and central headers both declare 1000 bytes slips past the
    ratio check; it must not inflate past what it declares, and the real slices still load."""
    files = [*series[:3], ("bomb.bin", bytes(50 << 20))]
    data = bytearray(zip_bytes(files))
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("bomb.bin")
    assert data[info.header_offset : info.header_offset + 4] == b"PK\x03\x04"
    struct.pack_into("<I", data, info.header_offset + 22, 1000)  # local header: uncompressed size
    central = data.rfind(b"PK\x01\x02")  # bomb.bin is the last central directory record
    assert data[central + 46 : central + 54] == b"bomb.bin"
    struct.pack_into("<I", data, central + 24, 1000)  # central directory: uncompressed size
    assert zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("bomb.bin").file_size == 1000

    sizes = {m.name: len(m.data) for m in iter_members(bytes(data))}
    assert sizes["bomb.bin"] <= 1000
    study = _only(load_studies(bytes(data)))
    assert study.default_series.n_slices == 3
    text = _all_warnings(study)
    assert "bomb.bin is damaged inside the zip and was skipped." in text
    assert ".." not in text


def test_many_small_members_of_zeros_are_refused_at_once(tmp_path) -> None:
    """The audit's bomb: 3,800 members of exactly 1 MiB of zeros, a 4.3 MB zip. Each member is
    below the 1 MiB from which its own ratio is checked, but the zip is 880:1 overall; it used to
    run past 120 s and climb towards 4 GB."""
    path = zeros_zip(tmp_path)
    assert 4_000_000 < path.stat().st_size < 4_500_000
    assert len(zipfile.ZipFile(path).infolist()) == ZEROS_MEMBERS
    cost = measure(lambda: load_studies(path), traced=True)
    assert isinstance(cost.outcome, UnsafeArchiveError), cost.outcome
    assert str(cost.outcome) == (
        "This zip looks like a zip bomb (its 3800 files are compressed more than 200:1 overall); "
        "it was rejected."
    )
    assert cost.seconds < 20, f"{cost.seconds:.1f} s"
    assert cost.traced_peak < 64 << 20, f"{cost.traced_peak >> 20} MB"


def test_members_that_are_not_dicom_are_refused_from_their_first_bytes(tmp_path) -> None:
    """The same 3,800 members beside 20 MB of random bytes: the overall ratio falls under 200:1,
    so every member is looked at; only its first bytes are inflated, and nothing is kept."""
    path = zeros_zip(tmp_path, ZEROS_FILLER)
    cost = measure(lambda: load_studies(path))
    assert isinstance(cost.outcome, NoImagesError), cost.outcome
    assert str(cost.outcome) == (
        "This upload holds no CT images (3801 file(s) skipped as not DICOM: slice0000.dcm, "
        "slice0001.dcm, slice0002.dcm, …)."
    )
    assert cost.seconds < 20, f"{cost.seconds:.1f} s"
    assert cost.rss_rise < 256 << 20, f"peak memory rose by {cost.rss_rise >> 20} MB"


def test_only_the_head_of_a_member_is_read_until_it_looks_like_dicom(series) -> None:
    asked: list[int | None] = []

    def loader(data: bytes):
        def read(limit: int | None) -> bytes:
            asked.append(limit)
            return data if limit is None else data[:limit]

        return read

    photo = read_member(Member("photo.png", loader=loader(b"\x89PNG\r\n\x1a\n" + bytes(1 << 20))))
    assert isinstance(photo, Skipped) and photo.reason == SkipReason.NOT_DICOM
    assert asked == [HEAD_BYTES]
    asked.clear()
    zeros_after_dicm = read_member(
        Member("z.dcm", loader=loader(bytes(128) + b"DICM" + bytes(1 << 20)))
    )
    assert isinstance(zeros_after_dicm, Skipped) and zeros_after_dicm.reason == SkipReason.NOT_DICOM
    assert asked == [HEAD_BYTES]
    asked.clear()
    raw = read_member(Member("slice.dcm", loader=loader(series[0][1])))
    assert isinstance(raw, RawSlice) and asked == [HEAD_BYTES, None]


def _document_bytes(size: int, number: int) -> bytes:
    """A DICOM Encapsulated PDF of ``size`` bytes: a DICOM object without an image."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.10.{number}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4\n" + bytes(size - 10) + b"\n"
    return write_ds(ds)


def test_member_bytes_are_dropped_once_parsed(tmp_path) -> None:
    """Every member's bytes used to stay in memory until the whole upload was read (100 MB
    here, 3.8 GB for the audit's zip); now only the members being parsed are held."""
    files = [(f"doc{i:03d}.dcm", _document_bytes(1 << 20, i)) for i in range(100)]
    path = write_zip(files, tmp_path / "documents.zip", zipfile.ZIP_STORED)
    cost = measure(lambda: load_studies(path), traced=True)
    assert isinstance(cost.outcome, NoImagesError), cost.outcome
    assert "100 file(s) skipped as DICOM object without an image" in str(cost.outcome)
    assert cost.traced_peak < 48 << 20, f"{cost.traced_peak >> 20} MB held for 100 MB of members"


def test_an_upload_past_its_deadline_is_stopped(series, tmp_path) -> None:
    done: list[int] = []
    for source in (zip_bytes(series[:4]), write_zip(series[:4], tmp_path / "s.zip")):
        with pytest.raises(UnsafeArchiveError) as info:
            load_studies(
                source, limits=ArchiveLimits(max_seconds=0), progress=lambda i, n: done.append(i)
            )
        assert str(info.value) == (
            "Reading this upload took longer than the 0 s allowed, so it was stopped: it holds "
            "far more than one head CT, or files built to be slow to read. Upload one study at a "
            "time."
        )
    assert done == [], "no member may be read past the deadline"
    study = _only(load_studies(zip_bytes(series[:4]), limits=ArchiveLimits(max_seconds=60)))
    assert study.default_series.n_slices == 4


def test_member_names_are_never_used_as_paths(series, tmp_path, monkeypatch) -> None:
    names = ["../../etc/passwd", "/abs/path.dcm", "..\\..\\x.dcm"]
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # "../../etc/passwd" would land in tmp_path/etc/passwd
    path = write_zip(
        [(n, data) for n, (_, data) in zip(names, series[:3], strict=True)], tmp_path / "evil.zip"
    )
    assert zipfile.ZipFile(path).namelist() == names
    tmp_dir = Path(tempfile.gettempdir())

    def snapshot() -> set[str]:
        return {str(p) for p in tmp_path.parent.iterdir()} | {str(p) for p in tmp_path.rglob("*")}

    before = snapshot()
    study = _only(load_studies(path))
    assert snapshot() == before, "loading wrote files"
    assert not (tmp_path / "etc").exists() and not Path("passwd").exists()
    assert not (tmp_dir / "passwd").exists() and not Path("/abs").exists()
    sources = {s.source for s in study.default_series.slices}
    assert sources == {"passwd", "path.dcm", "x.dcm"}
    assert not any(c in src for src in sources for c in ("/", "\\", ".."))


def test_encrypted_zip_asks_for_no_password(series) -> None:
    data = mark_encrypted(zip_bytes(series[:2]))
    assert all(i.flag_bits & 0x1 for i in zipfile.ZipFile(io.BytesIO(data)).infolist())
    with pytest.raises(InputError) as info:
        load_studies(data)
    assert "password" in str(info.value) and "without a password" in str(info.value)


# --------------------------------------------------------------------------- unreadable input


def test_empty_inputs(tmp_path) -> None:
    with pytest.raises(InputError) as info:
        load_studies(zip_bytes([]))
    assert "empty" in str(info.value) and "holds no files" in str(info.value)
    with pytest.raises(InputError) as info:
        load_studies(b"")
    assert "empty (0 bytes)" in str(info.value)
    folders_only = io.BytesIO()
    with zipfile.ZipFile(folders_only, "w") as zf:
        zf.mkdir("study/")
    with pytest.raises(InputError) as info:
        load_studies(folders_only.getvalue())
    assert "empty" in str(info.value)
    with pytest.raises(InputError) as info:
        load_studies(tmp_path / "missing.zip")
    assert "Nothing found at missing.zip" in str(info.value)


def test_bytes_that_are_neither_zip_nor_dicom() -> None:
    with pytest.raises(NoImagesError) as info:
        load_studies(b"%PDF-1.4 this is a report, not a study\n" * 20)
    message = str(info.value)
    assert "no CT images" in message and "not DICOM" in message


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_zip_is_reported_damaged(series, tmp_path, keep) -> None:
    data = zip_bytes(series[:3])
    cut = data[: int(len(data) * keep)]
    with pytest.raises(InputError) as info:
        load_studies(cut)
    assert "damaged" in str(info.value), str(info.value)
    path = tmp_path / "cut.zip"
    path.write_bytes(cut)
    with pytest.raises(InputError) as info:
        load_studies(path)
    assert "damaged" in str(info.value), str(info.value)


def test_zip_of_photos_holds_no_ct(tmp_path) -> None:
    with pytest.raises(NoImagesError) as info:
        load_studies(photos_zip(tmp_path))
    message = str(info.value)
    assert "no CT images" in message
    assert "3 file(s) skipped as not DICOM" in message
    assert "beach.png" in message and "sunset.jpg" in message and "notes.txt" in message
    assert "holiday/" not in message


# --------------------------------------------------------------------------- other modalities


def _as_modality(modality: str, sop_class: str, series_uid: str | None = None):
    def change(ds: pydicom.Dataset) -> None:
        ds.Modality = modality
        ds.SOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        if series_uid:
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = ds.SOPInstanceUID + "." + modality

    return change


@pytest.mark.parametrize(
    ("modality", "sop_class"),
    [
        ("MR", MRImageStorage),
        ("CR", ComputedRadiographyImageStorage),
        ("DX", DigitalXRayImageStorageForPresentation),
    ],
)
def test_non_ct_upload_is_refused(series, modality, sop_class) -> None:
    files = [(n, edit(d, _as_modality(modality, sop_class))) for n, d in series[:3]]
    with pytest.raises(NoImagesError) as info:
        load_studies(zip_bytes(files))
    message = str(info.value)
    assert f"holds {modality} images, not CT" in message and "CT only" in message


def test_mixed_ct_and_mr_loads_the_ct(series) -> None:
    mr = [
        (f"mr/{i}.dcm", edit(d, _as_modality("MR", MRImageStorage, "1.2.3.MR")))
        for i, (_, d) in enumerate(series[:2])
    ]
    study = _only(load_studies(zip_bytes([*series[:4], *mr])))
    assert len(study.series) == 1 and study.default_series.modality == "CT"
    assert study.default_series.n_slices == 4
    assert any(
        "other modalities were left out" in w and "CT only" in w and "2 MR image(s)" in w
        for w in study.warnings
    ), study.warnings


# --------------------------------------------------------------------------- non-image files


def _text_report_bytes(study_uid: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.ValueType = "CONTAINER"
    ds.TextValue = "No acute intracranial hemorrhage."
    return write_ds(ds)


def test_dicomdir_and_report_are_skipped_and_counted(series) -> None:
    study_uid = read_ds(series[0][1]).StudyInstanceUID
    files = [
        *series[:3],
        ("DICOMDIR", dicomdir_index()),
        ("export/INDEX.dcm", dicomdir_index()),  # a DICOMDIR by its SOP class, not its name
        ("export/report.dcm", _text_report_bytes(study_uid)),
    ]
    study = _only(load_studies(zip_bytes(files)))
    assert study.default_series.n_slices == 3
    text = "\n".join(study.warnings)
    assert "2 file(s) skipped as DICOMDIR index: DICOMDIR, INDEX.dcm." in text, text
    assert "1 file(s) skipped as DICOM object without an image" in text and "report.dcm" in text


def test_a_real_slice_named_dicomdir_is_a_slice(series) -> None:
    """A DICOMDIR is told by its content, not its name: a slice exported as 'DICOMDIR' loads."""
    files = [*series[:2], ("export/DICOMDIR", series[2][1]), ("DICOMDIR", dicomdir_index())]
    study = _only(load_studies(zip_bytes(files)))
    s = study.default_series
    assert s.n_slices == 3
    assert [x.sop_instance_uid for x in s.slices] == [
        read_ds(d).SOPInstanceUID for _, d in series[:3]
    ]
    assert s.slices[2].source == "DICOMDIR"
    text = "\n".join(study.warnings)
    assert "1 file(s) skipped as DICOMDIR index: DICOMDIR." in text, text


# --------------------------------------------------------------------------- odd series


def test_single_slice_loads_with_a_warning(series) -> None:
    study = _only(load_studies(zip_bytes(series[:1])))
    assert study.default_series.n_slices == 1
    assert any("single slice" in w for w in study.default_series.warnings)


def test_slice_of_another_size_is_skipped(series) -> None:
    def shrink(ds: pydicom.Dataset) -> None:
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[::2, ::2]).tobytes()
        ds.Rows, ds.Columns = 256, 256

    name, data = series[2]
    files = [*series[:2], ("small.dcm", edit(data, shrink)), *series[3:5]]
    study = _only(load_studies(zip_bytes(files)))
    s = study.default_series
    assert s.shape == (4, 512, 512)
    text = "\n".join(s.warnings)
    assert "1 slice(s) of another size than the series' 512×512 were skipped" in text
    assert "small.dcm, 256×256" in text


def test_truncated_slice_and_random_bytes_among_good_slices(series) -> None:
    name, data = series[2]
    pixel_data = data.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) PixelData tag
    assert pixel_data > 0
    cut = data[: pixel_data + (len(data) - pixel_data) // 2]
    noise = np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    files = [*series[:2], ("cut.dcm", cut), *series[3:5], ("x.dcm", noise)]
    study = _only(load_studies(zip_bytes(files)))
    assert study.default_series.n_slices == 4
    text = _all_warnings(study)
    assert "cut.dcm is truncated" in text, text
    assert "1 file(s) skipped as not DICOM: x.dcm." in text, text


def test_missing_positions_fall_back_to_instance_number(series) -> None:
    def without_position(number: int):
        def change(ds: pydicom.Dataset) -> None:
            del ds.ImagePositionPatient
            ds.InstanceNumber = number

        return change

    # InstanceNumber follows the head; the members are stored in reverse, so file order is wrong.
    files = [
        (f"{i:02d}.dcm", edit(d, without_position(i + 1))) for i, (_, d) in enumerate(series[:5])
    ]
    study = _only(load_studies(zip_bytes(files[::-1])))
    s = study.default_series
    expected = [read_ds(d).SOPInstanceUID for _, d in series[:5]]
    assert [x.sop_instance_uid for x in s.slices] == expected
    assert [x.instance_number for x in s.slices] == [1, 2, 3, 4, 5]
    assert any("InstanceNumber" in w and "no ImagePositionPatient" in w for w in s.warnings)


def test_missing_positions_and_numbers_fall_back_to_file_names(series) -> None:
    def strip(ds: pydicom.Dataset) -> None:
        del ds.ImagePositionPatient

    files = [(f"img{i + 1}.dcm", edit(d, strip)) for i, (_, d) in enumerate(series[:3])]
    s = _only(load_studies(zip_bytes(files[::-1]))).default_series
    assert [x.source for x in s.slices] == ["img1.dcm", "img2.dcm", "img3.dcm"]
    assert any("file-name order" in w for w in s.warnings)


def test_gap_in_the_series_is_reported(series) -> None:
    files = [*series[:3], *series[4:6]]  # slice 4 of 6 is missing
    s = _only(load_studies(zip_bytes(files))).default_series
    assert s.n_slices == 5
    gaps = [w for w in s.warnings if "Gap" in w]
    assert len(gaps) == 1 and "between slices 3 and 4" in gaps[0] and "may be missing" in gaps[0]


def test_duplicate_positions_are_reported(series) -> None:
    def copy_of(ds: pydicom.Dataset) -> None:
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".copy"

    files = [*series[:3], ("again.dcm", edit(series[1][1], copy_of))]
    s = _only(load_studies(zip_bytes(files))).default_series
    assert s.n_slices == 4
    assert any("same position" in w for w in s.warnings), s.warnings
    assert not any("Gap" in w for w in s.warnings)


def test_the_same_file_twice_is_read_once(series) -> None:
    files = [*series[:3], ("copy/of/first.dcm", series[0][1])]
    study = _only(load_studies(zip_bytes(files)))
    assert study.default_series.n_slices == 3
    assert any("1 file(s) repeated an image already read" in w for w in study.warnings)


# --------------------------------------------------------------------------- studies and series


def test_two_studies_in_one_zip_are_kept_apart(series, other_series) -> None:
    studies = load_studies(zip_bytes([*series[:4], *other_series]))
    assert len(studies) == 2
    by_uid = {s.study_instance_uid: s for s in studies}
    for files in (series[:4], other_series):
        first = read_ds(files[0][1])
        study = by_uid[first.StudyInstanceUID]
        assert len(study.series) == 1
        assert study.default_series.series_instance_uid == first.SeriesInstanceUID
        assert {x.sop_instance_uid for x in study.default_series.slices} == {
            read_ds(d).SOPInstanceUID for _, d in files
        }


def _sagittal(ds: pydicom.Dataset) -> None:
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    x = float(ds.ImagePositionPatient[2])  # spread the slices along x instead of z
    ds.ImagePositionPatient = [x, -120, 100]


def _localizer(ds: pydicom.Dataset) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]


def _thin(ds: pydicom.Dataset) -> None:
    ds.SliceThickness = "0.625"


@pytest.mark.parametrize(
    "variant", [_sagittal, _localizer, _thin], ids=["sagittal", "localizer", "thin"]
)
def test_default_series_is_the_axial_one(series, variant) -> None:
    """Split one real series in two: 3 axial slices stay, 5 become another series with more
    slices (sagittal, localizer or thin), which must not be chosen by default."""

    def other(ds: pydicom.Dataset) -> None:
        ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".2"
        ds.SeriesNumber = 2
        ds.SeriesDescription = "OTHER"
        variant(ds)

    def axial(ds: pydicom.Dataset) -> None:
        ds.SeriesNumber = 1
        ds.SeriesDescription = "AXIAL 5mm"

    main = [(n, edit(d, axial)) for n, d in series[:3]]
    second = [(f"other/{i}.dcm", edit(d, other)) for i, (_, d) in enumerate(series[3:8])]
    study = _only(load_studies(zip_bytes([*main, *second])))
    assert len(study.series) == 2
    assert sorted(s.n_slices for s in study.series) == [3, 5]
    default = study.default_series
    assert default.description == "AXIAL 5mm" and default.n_slices == 3 and default.is_axial
    assert any("This study has 2 CT series; series 1 'AXIAL 5mm'" in w for w in study.warnings)


# --------------------------------------------------------------------------- folder and bytes


def test_folder_and_bytes_give_the_same_slices_as_the_zip(series, tmp_path) -> None:
    path = write_zip(series[:5], tmp_path / "study.zip")
    root = tmp_path / "upload" / "disk" / "nested"
    with zipfile.ZipFile(path) as zf:
        zf.extractall(root)
    renamed = 0
    for file in list(root.rglob("*.dcm")):
        file.rename(file.with_suffix(""))  # CD exports often have no extension
        renamed += 1
    assert renamed == 5 and not list(root.rglob("*.dcm"))

    from_zip = _only(load_studies(path)).default_series
    from_folder = _only(load_studies(tmp_path / "upload")).default_series
    from_bytes = _only(load_studies(path.read_bytes())).default_series
    for other in (from_folder, from_bytes):
        assert [s.sop_instance_uid for s in other.slices] == [
            s.sop_instance_uid for s in from_zip.slices
        ]
        assert np.array_equal(other.hu, from_zip.hu)
    assert all("." not in s.source for s in from_folder.slices)
    assert all(os.path.sep not in s.source for s in from_folder.slices)
