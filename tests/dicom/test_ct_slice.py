"""core.dicom.ct_slice on real RSNA slices: compressed transfer syntaxes decode to the same HU as
the uncompressed originals, the RSNA 12-bit wrap-around fix, and PixelPaddingValue.

The shared data holds no compressed file, so each test encodes copies of real slices itself:
RLE, JPEG-LS and JPEG 2000 with pydicom (pylibjpeg-rle, pyjpegls, pylibjpeg-openjpeg) and
JPEG Lossless SV1 with GDCM, which is the only installed encoder for that syntax.
"""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import read_ds, write_ds, write_zip, zip_bytes
from hostile_inputs import (
    HUGE_SIDE,
    huge_rle_slice,
    padded_everywhere,
    rescaled,
    with_huge_rle_slice,
)
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from core.dicom.archive import Member
from core.dicom.ct_slice import (
    HEAD_BYTES,
    MAX_SLICE_SIDE,
    NotHounsfieldError,
    RawSlice,
    Skipped,
    SkipReason,
    looks_like_dicom,
    read_member,
    to_hu,
)
from core.dicom.study import load_studies

# The two pixel formats of the RSNA set (checked in test_the_two_real_pixel_formats):
UNSIGNED_12 = "ID_1acc4b6d6c"  # BitsStored 12, PixelRepresentation 0, implicit VR little endian
SIGNED_16 = "ID_0e5e6bc3c1"  # BitsStored 16, PixelRepresentation 1, explicit VR little endian
N_SLICES = 4  # slices per study used here: enough for a series, fast to encode

COMPRESSED = [RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1]


@pytest.fixture(scope="module")
def real_slices(study_zips: list[Path]) -> dict[str, list[tuple[str, bytes]]]:
    """The first N_SLICES files (by name) of each of the two studies, as (member name, bytes)."""
    by_id = {p.stem: p for p in study_zips}
    out: dict[str, list[tuple[str, bytes]]] = {}
    for study_id in (UNSIGNED_12, SIGNED_16):
        with zipfile.ZipFile(by_id[study_id]) as zf:
            names = sorted(n for n in zf.namelist() if n.endswith(".dcm"))[:N_SLICES]
            out[study_id] = [(n, zf.read(n)) for n in names]
    return out


def _compress(data: bytes, syntax: UID, workdir: Path) -> bytes:
    """A copy of one DICOM file in ``syntax``, encoded by pydicom or (JPEG Lossless SV1) GDCM."""
    if syntax == JPEGLosslessSV1:
        import gdcm  # python-gdcm: pydicom has no encoder for JPEG Lossless

        src, dst = workdir / "gdcm_in.dcm", workdir / "gdcm_out.dcm"
        src.write_bytes(data)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(src))
        assert reader.Read(), "GDCM could not read the real slice"
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        assert change.Change(), "GDCM could not encode JPEG Lossless SV1"
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(dst))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write(), "GDCM could not write the JPEG Lossless file"
        return dst.read_bytes()
    ds = read_ds(data)
    # No adjustment is needed for either format: the stored values already fit BitsStored (see
    # test_the_two_real_pixel_formats), which is what the pydicom encoders require.
    ds.compress(syntax, generate_instance_uid=False)  # keep the real UIDs, to compare order
    return write_ds(ds)


def test_the_two_real_pixel_formats(real_slices) -> None:
    """The two studies used below really are the two pixel formats of the RSNA set, and their
    stored values fit BitsStored (so the encoders take them unchanged)."""
    expected = {
        UNSIGNED_12: (12, 0, ImplicitVRLittleEndian),
        SIGNED_16: (16, 1, ExplicitVRLittleEndian),
    }
    for study_id, files in real_slices.items():
        for _, data in files:
            ds = read_ds(data)
            bits, representation, syntax = expected[study_id]
            assert (ds.BitsStored, ds.PixelRepresentation) == (bits, representation), study_id
            assert ds.file_meta.TransferSyntaxUID == syntax, study_id
            stored = ds.pixel_array.astype(np.int64)
            if representation:
                low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            else:
                low, high = 0, (1 << bits) - 1
            assert low <= stored.min() and stored.max() <= high, study_id


@pytest.mark.parametrize("syntax", COMPRESSED, ids=lambda s: s.name)
@pytest.mark.parametrize("study_id", [UNSIGNED_12, SIGNED_16])
def test_compressed_slice_decodes_to_the_same_hu(real_slices, study_id, syntax, tmp_path) -> None:
    name, original = real_slices[study_id][0]
    expected = to_hu(read_ds(original))
    encoded = _compress(original, syntax, tmp_path)
    ds = read_ds(encoded)
    assert ds.file_meta.TransferSyntaxUID == syntax, "the copy was not re-encoded"
    assert len(encoded) < len(original), f"{syntax.name} should be smaller than the original"
    assert np.array_equal(to_hu(ds), expected), f"{syntax.name} changed the HU of {name}"
    # And through the loader's per-file entry point, which must name the transfer syntax.
    raw = read_member(Member(name, encoded))
    assert isinstance(raw, RawSlice), f"{syntax.name} slice was skipped: {raw}"
    assert raw.transfer_syntax == syntax
    assert raw.hu is not None and np.array_equal(raw.hu, expected)


@pytest.mark.parametrize("syntax", COMPRESSED, ids=lambda s: s.name)
@pytest.mark.parametrize("study_id", [UNSIGNED_12, SIGNED_16])
def test_zip_of_compressed_slices_loads_like_the_uncompressed_zip(
    real_slices, study_id, syntax, tmp_path
) -> None:
    files = real_slices[study_id]
    plain = load_studies(write_zip(files, tmp_path / "plain.zip"))
    packed = [(name, _compress(data, syntax, tmp_path)) for name, data in files]
    compressed = load_studies(write_zip(packed, tmp_path / "compressed.zip"))
    assert len(plain) == len(compressed) == 1
    a, b = plain[0].default_series, compressed[0].default_series
    assert b.n_slices == a.n_slices == N_SLICES
    assert [s.sop_instance_uid for s in b.slices] == [s.sop_instance_uid for s in a.slices]
    assert [s.source for s in b.slices] == [s.source for s in a.slices]
    assert [s.z for s in b.slices] == [s.z for s in a.slices]
    assert np.array_equal(b.hu, a.hu), f"{syntax.name} series differs from the original"
    assert b.transfer_syntaxes == (str(syntax),)
    assert a.transfer_syntaxes != b.transfer_syntaxes


def _buggy_rsna_form(data: bytes, intercept: float) -> tuple[pydicom.Dataset, np.ndarray]:
    """The wrap-around found in some RSNA 2019 files: 12-bit unsigned, HU stored modulo 4096
    with an intercept near 0. Returns that dataset and the HU it stands for."""
    ds = read_ds(data)
    expected = np.clip(to_hu(ds), -1000, 3000).astype(np.int16)
    stored = np.mod(expected.astype(np.int32), 4096).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = intercept, 1
    return read_ds(write_ds(ds)), expected


@pytest.mark.parametrize("intercept", [1, 0, -99])
def test_rsna_12bit_wraparound_is_restored(real_slices, intercept) -> None:
    name, data = real_slices[UNSIGNED_12][1]
    ds, expected = _buggy_rsna_form(data, intercept)
    stored = ds.pixel_array.astype(np.int32)
    # Without the fix, air (-1000 HU, stored as 3096) would read as bright as bone.
    naive = stored + intercept
    assert np.median(naive[5:40, 150:360]) > 2800
    assert np.array_equal(to_hu(ds), expected)
    assert -1030 <= np.median(to_hu(ds)[5:40, 150:360]) <= -900
    raw = read_member(Member(name, write_ds(ds)))
    assert isinstance(raw, RawSlice) and np.array_equal(raw.hu, expected)


def test_correct_slices_are_not_touched_by_the_rsna_fix(real_slices) -> None:
    # A correct 12-bit unsigned slice (intercept -1024): HU = stored - 1024, nothing shifted.
    ds = read_ds(real_slices[UNSIGNED_12][1][1])
    assert ds.BitsStored == 12 and float(ds.RescaleIntercept) == -1024
    stored = ds.pixel_array.astype(np.int32)
    assert np.array_equal(to_hu(ds), np.clip(stored - 1024, -1024, None))
    # A 16-bit signed slice storing HU directly (intercept 0 > -100) is no 12-bit file either.
    ds = read_ds(real_slices[SIGNED_16][1][1])
    hu = ds.pixel_array.astype(np.int32) - 1024
    ds.PixelData = hu.astype(np.int16).tobytes()
    ds.RescaleIntercept = 0
    ds = read_ds(write_ds(ds))
    assert np.array_equal(to_hu(ds), np.clip(hu, -1024, None))


def test_unsigned_pixel_padding_value_becomes_air(real_slices) -> None:
    ds = read_ds(real_slices[UNSIGNED_12][2][1])
    reference = to_hu(ds)
    stored = ds.pixel_array.copy()
    assert not (stored == 4095).any()
    stored[:40, :40] = 4095  # 3071 HU if read as a pixel
    ds.PixelData = stored.tobytes()
    unpadded = to_hu(read_ds(write_ds(ds)))
    assert (unpadded[:40, :40] == 3071).all()
    ds.add_new(0x00280120, "US", 4095)  # PixelPaddingValue
    hu = to_hu(read_ds(write_ds(ds)))
    assert (hu[:40, :40] == -1024).all()
    outside = np.ones_like(hu, dtype=bool)
    outside[:40, :40] = False
    assert np.array_equal(hu[outside], reference[outside])


def test_unsigned_pixel_padding_range_becomes_air(real_slices) -> None:
    ds = read_ds(real_slices[UNSIGNED_12][2][1])
    stored = ds.pixel_array.copy()
    stored[:16, :256] = (4000 + np.arange(16 * 256) % 96).reshape(16, 256)  # 4000..4095
    ds.PixelData = stored.tobytes()
    ds.add_new(0x00280120, "US", 4000)  # PixelPaddingValue
    ds.add_new(0x00280121, "US", 4095)  # PixelPaddingRangeLimit
    hu = to_hu(read_ds(write_ds(ds)))
    assert (hu[:16, :256] == -1024).all()
    assert hu[200:300, 200:300].max() > 0, "the head must not be taken for padding"


def _slice_with_a_region_at_minus_1000(real_slices) -> tuple[pydicom.Dataset, np.ndarray]:
    """A real signed slice storing HU directly (intercept 0), its top-left 40×40 at -1000, so
    that a padding value of -1000 would read as -1000 HU, not as the -1024 padding becomes."""
    ds = read_ds(real_slices[SIGNED_16][2][1])
    stored = (ds.pixel_array.astype(np.int32) - 1024).astype(np.int16)
    stored[:40, :40] = -1000
    ds.PixelData = stored.tobytes()
    ds.RescaleIntercept = 0
    return ds, stored


@pytest.mark.parametrize(
    ("vr", "value"),
    [("SS", -1000), ("US", 64536)],  # -1000 as SS, and as the same 16 bits written as US
    ids=["as-SS", "two's-complement-as-US"],
)
def test_signed_pixel_padding_value_becomes_air(real_slices, vr, value) -> None:
    ds, stored = _slice_with_a_region_at_minus_1000(real_slices)
    unpadded = to_hu(read_ds(write_ds(ds)))
    assert (unpadded[:40, :40] == -1000).all()
    ds.add_new(0x00280120, vr, value)  # PixelPaddingValue
    padded = read_ds(write_ds(ds))
    hu = to_hu(padded)
    assert (hu[:40, :40] == -1024).all()
    assert (hu[stored == -1000] == -1024).all(), "every pixel equal to the padding value is air"
    keep = stored != -1000
    assert np.array_equal(hu[keep], unpadded[keep])
    raw = read_member(Member("padded.dcm", write_ds(ds)))
    assert isinstance(raw, RawSlice) and np.array_equal(raw.hu, hu)


def test_signed_padding_in_an_implicit_vr_file(real_slices) -> None:
    """Implicit VR carries no VR: the value's sign must come from PixelRepresentation."""
    ds, _ = _slice_with_a_region_at_minus_1000(real_slices)
    ds.add_new(0x00280120, "SS", -1000)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    data = write_ds(ds)
    back = read_ds(data)
    assert back.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    hu = to_hu(back)
    assert (hu[:40, :40] == -1024).all()
    assert hu[200:300, 200:300].max() > 0


def test_slice_over_the_size_limit_is_skipped_before_decoding(real_slices, tmp_path) -> None:
    """A 150 kB RLE file declaring 30000×30000 is refused from its header: decoding would
    allocate 1.8 GB. The real slices beside it still load."""
    files = real_slices[UNSIGNED_12][:2]
    huge = huge_rle_slice(files[0][1])
    assert len(huge) < 200_000
    ds = read_ds(huge)
    assert (ds.Rows, ds.Columns) == (HUGE_SIDE, HUGE_SIDE)
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    assert HUGE_SIDE > MAX_SLICE_SIDE

    tracemalloc.start()
    try:
        skipped = read_member(Member("huge.dcm", huge))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(skipped, Skipped) and skipped.reason == SkipReason.UNSUPPORTED
    assert skipped.detail == (
        "huge.dcm declares a 30000×30000 image, larger than the 4096×4096 this tool reads "
        "(a head CT slice is 512×512); it was skipped without decoding"
    )
    assert peak < 50 << 20, f"{peak >> 20} MB allocated for a header"

    study = load_studies(with_huge_rle_slice(tmp_path, files))[0]
    assert study.default_series.n_slices == 2
    assert any("huge.dcm declares a 30000×30000 image" in w for w in study.warnings)


@pytest.mark.parametrize(
    ("slope", "intercept", "problem"),
    [
        ("nan", None, "has RescaleSlope nan, which is not a number"),
        ("0", None, "has RescaleSlope 0, which would give every pixel the same value"),
        ("inf", None, "has RescaleSlope inf, which is not a finite number"),
        (None, "-inf", "has RescaleIntercept -inf, which is not a finite number"),
        (None, "nan", "has RescaleIntercept nan, which is not a number"),
        (
            "1e308",
            None,
            "has RescaleSlope 1e308 and RescaleIntercept -1024, which would put its pixels "
            "between inf and inf HU, beyond the ±65536 that any CT value lies within",
        ),
        (
            None,
            "-1e9",
            "has RescaleSlope 1 and RescaleIntercept -1e9, which would put its pixels between "
            "-1e+09 and -1e+09 HU, beyond the ±65536 that any CT value lies within",
        ),
    ],
    ids=[
        "slope-nan",
        "slope-0",
        "slope-inf",
        "intercept-minus-inf",
        "intercept-nan",
        "slope-1e308",
        "intercept-minus-1e9",
    ],
)
def test_impossible_rescale_is_skipped_with_a_reason(
    real_slices, tmp_path, slope, intercept, problem
) -> None:
    """Impossible rescale values used to be read as 1 and 0 (NaN, 0, inf) or clipped into a
    flat image (1e308 → 32767 HU) silently; the slice is now skipped and the user told why."""
    files = real_slices[UNSIGNED_12][:3]
    name, data = files[1]
    bad = rescaled(data, slope, intercept)
    skipped = read_member(Member("bad.dcm", bad))
    assert isinstance(skipped, Skipped), f"{problem!r}: read as a slice"
    assert skipped.reason == SkipReason.IMPOSSIBLE_VALUES
    assert skipped.detail == (
        f"bad.dcm {problem}, so its pixels cannot be read as Hounsfield units; "
        "the slice was skipped"
    )
    with pytest.raises(NotHounsfieldError):
        to_hu(read_ds(bad))

    study = load_studies(write_zip([files[0], ("bad.dcm", bad), files[2]], tmp_path / "z.zip"))[0]
    assert study.default_series.n_slices == 2
    assert f"bad.dcm {problem}" in "\n".join(study.warnings), study.warnings


def test_plausible_rescale_is_still_read(real_slices) -> None:
    """A slope of 0.5 with an intercept of -512 is unusual but possible: read, not skipped."""
    name, data = real_slices[UNSIGNED_12][1]
    reference = to_hu(read_ds(data)).astype(np.int32)
    raw = read_member(Member(name, rescaled(data, "0.5", "-512")))
    assert isinstance(raw, RawSlice) and raw.hu is not None
    stored = read_ds(data).pixel_array.astype(np.float64)
    assert np.array_equal(raw.hu, np.clip(np.rint(stored * 0.5 - 512), -1024, None))
    assert not np.array_equal(raw.hu, reference)


@pytest.mark.parametrize("study_id", [UNSIGNED_12, SIGNED_16])
def test_padding_that_covers_the_whole_image_is_skipped(real_slices, study_id) -> None:
    name, data = real_slices[study_id][2]
    stored = read_ds(data).pixel_array
    low, high = int(stored.min()), int(stored.max())
    skipped = read_member(Member("air.dcm", padded_everywhere(data)))
    assert isinstance(skipped, Skipped) and skipped.reason == SkipReason.IMPOSSIBLE_VALUES
    assert skipped.detail == (
        f"air.dcm has a PixelPaddingValue range ({low} to {high}) that covers every pixel, "
        "which would turn the whole slice into air; the slice was skipped"
    )


def test_files_without_preamble_pass_the_quick_check(real_slices) -> None:
    """Some exports write no 128-byte preamble and no 'DICM': the file meta group (0002), or
    the dataset alone (group 0008), comes first. The quick check that refuses files that are
    not DICOM from their first bytes must let both through to the parser."""
    name, data = real_slices[SIGNED_16][0]
    ds = read_ds(data)
    ds.preamble = None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    no_preamble = buf.getvalue()
    assert no_preamble[:2] == b"\x02\x00" and no_preamble[128:132] != b"DICM"
    raw = read_member(Member("no_preamble", no_preamble))
    assert isinstance(raw, RawSlice), raw
    assert np.array_equal(raw.hu, to_hu(ds))

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    bare = fp.getvalue()  # no file meta: no transfer syntax for the decoder either
    assert bare[:2] == b"\x08\x00"
    assert looks_like_dicom(bare[:HEAD_BYTES])
    assert read_member(Member("bare", bare)).reason != SkipReason.NOT_DICOM


def test_a_zip_inside_the_upload_is_named_not_opened(real_slices) -> None:
    """A zip member that is itself a zip is skipped as one, unread: opening it would read an
    archive the upload's limits were never checked on. A DICOM file whose 128-byte preamble
    happens to start like a zip is still a slice."""
    name, data = real_slices[SIGNED_16][0]
    inner = read_member(Member("export/inner.zip", zip_bytes([(name, data)])))
    assert isinstance(inner, Skipped) and inner.reason == SkipReason.ARCHIVE
    assert inner.detail == "inner.zip is a zip inside the upload"
    ds = read_ds(data)
    ds.preamble = b"PK\x03\x04" + bytes(124)
    looks_zipped = write_ds(ds)
    assert looks_zipped[:4] == b"PK\x03\x04" and looks_zipped[128:132] == b"DICM"
    assert isinstance(read_member(Member("pk.dcm", looks_zipped)), RawSlice)
