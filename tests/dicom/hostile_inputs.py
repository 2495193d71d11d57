"""A small corpus of hostile uploads, built on demand in a test's tmp_path.

Why: the loader reads whatever a user drops on the page. Each function here writes one input
that once cost minutes, gigabytes or a silent wrong answer, so that the tests can show it now
ends in a readable message within bounded time and memory. Nothing is stored in the repository:
a few real slices (given by the caller) and pydicom, zipfile and Pillow build everything.
"""

from __future__ import annotations

import io
import resource
import struct
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from dicom_helpers import Files, read_ds, write_ds, write_zip, zip_bytes
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    MRImageStorage,
    RLELossless,
)

from core.dicom.ct_slice import HEAD_BYTES


@dataclass(frozen=True)
class Cost:
    """What loading one input cost."""

    outcome: object  # what the run returned, or the InputError it raised
    seconds: float
    traced_peak: int  # bytes, tracemalloc's peak (Python objects, numpy arrays); 0 if not traced
    rss_rise: int  # bytes the process's peak resident memory rose by (native allocations too)


def measure(run: Callable[[], object], traced: bool = False) -> Cost:
    """Run ``run()`` and say what it cost. Any exception other than an InputError propagates:
    a traceback is never an acceptable answer to a bad upload.

    ``rss_rise`` sees every allocation (a decoder's native buffer too) but only above the
    process's earlier peak; ``traced=True`` adds tracemalloc's exact peak of Python memory, at
    several times the run time, so timings are taken untraced.
    """
    from core.errors import InputError

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if traced:
        tracemalloc.start()
    start = time.perf_counter()
    try:
        outcome: object = run()
    except InputError as exc:
        outcome = exc
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] if traced else 0
        if traced:
            tracemalloc.stop()
    rss_rise = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    ) * 1024  # Linux: KiB
    return Cost(outcome, seconds, peak, rss_rise)


HUGE_SIDE = 30_000  # declared Rows and Columns of the RLE header case
ZEROS_MEMBERS = 3_800  # members of the zip of zeros, 1 MiB each: 3.8 GB from a 4.3 MB zip
#: Random bytes, stored, that bring the zip of zeros under the 200:1 overall ratio.
ZEROS_FILLER = 20 << 20


def zeros_zip(tmp: Path, filler: int = 0) -> Path:
    """3,800 members of exactly 1 MiB of zeros, deflated: a 4.3 MB zip that unpacks to 3.8 GB
    while each member stays under the 1 MiB from which members are checked for their ratio.
    With ``filler`` > 0, one stored member of that many random bytes (filler.bin) lowers the
    zip's overall ratio below 200:1, so every member must be looked at.

    Written by hand: zipfile would deflate the same megabyte 3,800 times (minutes on a busy
    machine); here it is deflated once and its compressed bytes reused for every member.
    """
    zeros = bytes(1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, as inside a zip
    deflated = packer.compress(zeros) + packer.flush()
    crc = zlib.crc32(zeros)
    entries = [(f"slice{i:04d}.dcm", crc, len(zeros), deflated, 8) for i in range(ZEROS_MEMBERS)]
    if filler:
        noise = b"FILL" + np.random.default_rng(0).bytes(filler - 4)
        entries.append(("filler.bin", zlib.crc32(noise), filler, noise, 0))
    return _write_raw_zip(tmp / ("zeros_filled.zip" if filler else "zeros.zip"), entries)


def _write_raw_zip(path: Path, entries: list[tuple[str, int, int, bytes, int]]) -> Path:
    """A zip of (name, crc32, size, bytes as stored, method: 0 stored or 8 deflated) entries."""
    local, central = bytearray(), bytearray()
    for name, crc, size, stored, method in entries:
        raw_name = name.encode()
        fields = (method, 0, 0x21, crc, len(stored), size, len(raw_name), 0)  # dated 1980-01-01
        offset = len(local)
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, *fields) + raw_name + stored
        central += (
            struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, *fields, 0, 0, 0, 0, offset)
            + raw_name
        )
    n = len(entries)
    end = b""
    if n > 0xFFFF:  # more entries than the end record can count: the zip64 end record counts them
        zip64_end = len(local) + len(central)
        end += struct.pack(
            "<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), len(local)
        )
        end += struct.pack("<IIQI", 0x07064B50, 0, zip64_end, 1)
        n = 0xFFFF
    end += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


def huge_rle_slice(real: bytes) -> bytes:
    """A real slice's header declaring a 30000×30000 RLE image, with ~150 kB of RLE data.

    Decoding it would allocate what the header declares (1.8 GB) before finding the data short.
    """
    ds = read_ds(real)
    # RLE frame: a 64-byte header (2 segments, the two bytes of each 16-bit pixel), then
    # segments of replicate runs ("repeat the next byte 128 times").
    segment = b"\x81\x00" * 37_500
    header = struct.pack("<3I", 2, 64, 64 + len(segment)) + bytes(52)
    ds.PixelData = encapsulate([header + segment + segment])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.Rows = ds.Columns = HUGE_SIDE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.file_meta.TransferSyntaxUID = RLELossless
    return write_ds(ds)


def with_huge_rle_slice(tmp: Path, files: Files) -> Path:
    """A zip of real slices plus one huge RLE header (named huge.dcm)."""
    return write_zip([*files, ("huge.dcm", huge_rle_slice(files[0][1]))], tmp / "huge_rle.zip")


def rescaled(real: bytes, slope: str | None = None, intercept: str | None = None) -> bytes:
    """A real slice with RescaleSlope and/or RescaleIntercept replaced by the given text."""
    ds = read_ds(real)
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    return write_ds(ds)


def padded_everywhere(real: bytes) -> bytes:
    """A real slice whose PixelPaddingValue..PixelPaddingRangeLimit spans every stored value."""
    ds = read_ds(real)
    stored = ds.pixel_array
    vr = "SS" if ds.PixelRepresentation else "US"
    ds.add_new(0x00280120, vr, int(stored.min()))  # PixelPaddingValue
    ds.add_new(0x00280121, vr, int(stored.max()))  # PixelPaddingRangeLimit
    return write_ds(ds)


def dicomdir_index() -> bytes:
    """A minimal real DICOMDIR: Media Storage Directory Storage, no records."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.FileSetID = "STUDY"
    ds.DirectoryRecordSequence = []
    return write_ds(ds)


def mark_encrypted(data: bytes) -> bytes:
    """The zip with every member flagged as encrypted (general purpose bit 0), in the local
    headers and the central directory. The standard library cannot write an encrypted zip; to
    zipfile, and so to the loader, this is one: reading a member asks for a password."""
    out = bytearray(data)
    zf = zipfile.ZipFile(io.BytesIO(data))
    for info in zf.infolist():  # local headers: general purpose flag at offset 6
        assert out[info.header_offset : info.header_offset + 4] == b"PK\x03\x04"
        flags = struct.unpack_from("<H", out, info.header_offset + 6)[0]
        struct.pack_into("<H", out, info.header_offset + 6, flags | 0x1)
    pos = zf.start_dir
    for _ in zf.infolist():  # central directory: flag at offset 8
        assert out[pos : pos + 4] == b"PK\x01\x02"
        flags = struct.unpack_from("<H", out, pos + 8)[0]
        struct.pack_into("<H", out, pos + 8, flags | 0x1)
        n, m, k = struct.unpack_from("<HHH", out, pos + 28)
        pos += 46 + n + m + k
    return bytes(out)


def photos_zip(tmp: Path) -> Path:
    """Holiday photos (PNG, JPEG) and a note, zipped: no DICOM at all."""
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    png, jpg = io.BytesIO(), io.BytesIO()
    photo.save(png, format="PNG")
    photo.save(jpg, format="JPEG")
    files = [
        ("holiday/beach.png", png.getvalue()),
        ("holiday/sunset.jpg", jpg.getvalue()),
        ("holiday/notes.txt", b"not a CT\n"),
    ]
    return write_zip(files, tmp / "photos.zip")


def _with_bad_slice(name: str, bad: Callable[[bytes], bytes]) -> Callable[[Path, Files], Path]:
    """A builder: the first three real slices, the middle one replaced by bad(it) as ``name``."""

    def build(tmp: Path, files: Files) -> Path:
        a, b, c = files[:3]
        return write_zip([a, (name, bad(b[1])), c], tmp / "study.zip")

    return build


def _file(name: str, data: Callable[[Files], bytes]) -> Callable[[Path, Files], Path]:
    def build(tmp: Path, files: Files) -> Path:
        path = tmp / name
        path.write_bytes(data(files))
        return path

    return build


def _renamed_dicomdir(tmp: Path, files: Files) -> Path:
    a, b, c = files[:3]
    slices = [a, ("export/DICOMDIR", b[1]), c]
    return write_zip([*slices, ("DICOMDIR", dicomdir_index())], tmp / "export.zip")


def _traversal(tmp: Path, files: Files) -> Path:
    names = ["../../x", "../../../../etc/passwd", "/abs/evil.dcm"]
    return write_zip([(n, d) for n, (_, d) in zip(names, files[:3], strict=True)], tmp / "tr.zip")


def _symlink_zip(tmp: Path, files: Files) -> Path:
    """The real slices beside two zip entries marked as symbolic links (Unix mode 0o120777 in
    external_attr; an unzip tool would create links), to /etc/passwd and to ../../x. Inside a
    zip a link's bytes are its target's name: the loader never touches the disk for a member, so
    both are bytes that are not DICOM, never a path followed or written."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            zf.writestr(name, data)
        for name, target in (("passwd-link", "/etc/passwd"), ("scans/up-link", "../../x")):
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix: external_attr's high 16 bits are st_mode
            info.external_attr = 0o120777 << 16  # S_IFLNK | rwxrwxrwx
            zf.writestr(info, target)
    path = tmp / "links.zip"
    path.write_bytes(buf.getvalue())
    return path


def _folder_with_symlinks(tmp: Path, files: Files) -> Path:
    """A folder upload: the real slices, a link to /etc/passwd and a link to a folder outside
    the upload holding one more slice of the series (same study, its own SOPInstanceUID and
    position), which would load as a fourth slice if the walk followed links."""
    outside = tmp / "outside"
    outside.mkdir()
    ds = read_ds(files[-1][1])
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 5]
    (outside / "beyond.dcm").write_bytes(write_ds(ds))
    upload = tmp / "upload"
    upload.mkdir()
    for name, data in files:
        (upload / Path(name).name).write_bytes(data)
    (upload / "passwd-link").symlink_to("/etc/passwd")
    (upload / "escape-link").symlink_to(outside, target_is_directory=True)
    return upload


def tiny_members_zip(tmp: Path, n: int) -> Path:
    """n stored members of one byte each (names t000000.dcm…): a zip of ~100 bytes a member."""
    crc = zlib.crc32(b"x")
    entries = [(f"t{i:06d}.dcm", crc, 1, b"x", 0) for i in range(n)]
    return _write_raw_zip(tmp / f"tiny{n}.zip", entries)


def repeated_entry_zip(tmp: Path, n: int) -> Path:
    """One 1-byte member listed n times in the central directory (53 bytes an entry), counted
    in a zip64 end record whose classic record says 0xFFFF / 0xFFFFFFFF, as zip64 writers do.

    Why: zipfile parses the whole central directory before the members can be counted, at
    about 10 µs and 300 bytes of memory an entry: this 51 MB zip cost 11.5 s and 308 MiB before
    its list's size was checked first, and a 1 GB one (the dashboard's upload cap) would cost
    minutes and gigabytes.
    """
    name = b"t.dcm"
    fields = (0, 0, 0x21, zlib.crc32(b"x"), 1, 1, len(name), 0)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, *fields) + name + b"x"
    entry = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 20, 0, *fields, 0, 0, 0, 0, 0) + name
    central = entry * n
    zip64_end = len(local) + len(central)
    end = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), len(local))
    end += struct.pack("<IIQI", 0x07064B50, 0, zip64_end, 1)
    end += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path = tmp / f"listed{n}.zip"
    path.write_bytes(local + central + end)
    return path


def as_mr(real: bytes, series_uid: str | None = None) -> bytes:
    """A real slice relabelled as MR (Modality, SOP class); with ``series_uid``, moved to that
    series under a new SOPInstanceUID, so that it can sit beside the CT slice it came from."""
    ds = read_ds(real)
    ds.Modality = "MR"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    if series_uid:
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID + ".4"
    return write_ds(ds)


def _mr_only(tmp: Path, files: Files) -> Path:
    return write_zip([(f"mr/{i}.dcm", as_mr(d)) for i, (_, d) in enumerate(files)], tmp / "mr.zip")


def _mr_beside_ct(tmp: Path, files: Files) -> Path:
    series = "1.2.826.0.1.3680043.8.498.4"
    mr = [(f"mr/{i}.dcm", as_mr(d, series)) for i, (_, d) in enumerate(files[:2])]
    return write_zip([*files, *mr], tmp / "ct_mr.zip")


def enhanced_ct(files: Files) -> bytes:
    """The real slices as one multi-frame Enhanced CT Image Storage object (NumberOfFrames 3,
    their pixels one after another, uncompressed)."""
    ds = read_ds(files[0][1])
    frames = np.stack([read_ds(d).pixel_array for _, d in files])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID + ".3"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.NumberOfFrames = len(files)
    ds.PixelData = frames.astype(frames.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW"
    return write_ds(ds)


def _zip_as_dcm(overwrite: str) -> Callable[[Path, Files], Path]:
    """A zip of the real slices renamed study.dcm, its ``head`` or ``tail`` half overwritten
    with random bytes (a copy cut off and padded, a disk error)."""

    def build(tmp: Path, files: Files) -> Path:
        data = bytearray(zip_bytes(files))
        half = len(data) // 2
        noise = np.random.default_rng(1).bytes(len(data) - half)
        if overwrite == "head":
            data[: len(data) - half] = noise
        else:
            data[half:] = noise
        path = tmp / "study.dcm"
        path.write_bytes(bytes(data))
        return path

    return build


def _renamed(names: list[str]) -> Callable[[Path, Files], Path]:
    """The real slices stored (written by hand: zipfile would cut a name at its NUL) under the
    given names, one each."""

    def build(tmp: Path, files: Files) -> Path:
        entries = [
            (name, zlib.crc32(data), len(data), data, 0)
            for name, (_, data) in zip(names, files, strict=True)
        ]
        return _write_raw_zip(tmp / "names.zip", entries)

    return build


#: A zip member's name is at most 65,535 bytes (its length is a 16-bit field): a 1 MiB name
#: cannot be written; this is the longest there is.
LONGEST_NAME = "n" * 65_531 + ".dcm"
#: The size of the sparse upload: above the dashboard's 1024 MB upload cap
#: (.streamlit/config.toml) and the loader's 512 MiB for one file; it takes no disk.
SPARSE_BYTES = 1100 << 20


def _sparse_dicom(tmp: Path, files: Files) -> Path:
    """A 1.1 GB file that starts like DICOM ('DICM' and a file meta tag) and is a hole after."""
    path = tmp / "big.dcm"
    with path.open("wb") as fh:
        fh.write(files[0][1][:HEAD_BYTES])
        fh.truncate(SPARSE_BYTES)
    return path


def _declares_5gb(tmp: Path, files: Files) -> Path:
    """Ten stored members of one real slice each declaring 500 MiB: the zip is 5 MB but says
    it unpacks to 5,000 MiB, above the loader's 4,096 MiB for one upload."""
    name, data = files[0]
    entries = [(f"s{i}.dcm", zlib.crc32(data), 500 << 20, data, 0) for i in range(10)]
    return _write_raw_zip(tmp / "declares.zip", entries)


@dataclass(frozen=True)
class Hostile:
    """One hostile input and the answer the user must get."""

    id: str
    build: Callable[[Path, Files], Path]  # (tmp_path, real slices in head order) → the upload
    says: str | None  # a phrase of the message: the InputError's, or the loaded study's warnings
    loads: int | None = None  # slices still loaded from the rest of the upload; None: refused
    hides: tuple[str, ...] = ()  # phrases the message must not hold (what was never to be read)


_NOT_HU = "so its pixels cannot be read as Hounsfield units; the slice was skipped."

CORPUS: tuple[Hostile, ...] = (
    Hostile(
        "zeros-3800x1MiB",
        lambda tmp, files: zeros_zip(tmp),
        "This zip looks like a zip bomb (its 3800 files are compressed more than 200:1 overall)",
    ),
    Hostile(
        "zeros-3800x1MiB-under-ratio",
        lambda tmp, files: zeros_zip(tmp, ZEROS_FILLER),
        "This upload holds no CT images (3801 file(s) skipped as not DICOM: slice0000.dcm",
    ),
    Hostile(
        "dicm-then-zeros",
        _file("zeros.dcm", lambda files: bytes(128) + b"DICM" + bytes(1 << 20)),
        "This upload holds no CT images (1 file(s) skipped as not DICOM: zeros.dcm)",
    ),
    Hostile(
        "rle-30000x30000",
        with_huge_rle_slice,
        "huge.dcm declares a 30000×30000 image, larger than the 4096×4096 this tool reads",
        loads=3,
    ),
    Hostile(
        "slope-nan",
        _with_bad_slice("bad.dcm", lambda d: rescaled(d, slope="nan")),
        f"bad.dcm has RescaleSlope nan, which is not a number, {_NOT_HU}",
        loads=2,
    ),
    Hostile(
        "slope-0",
        _with_bad_slice("bad.dcm", lambda d: rescaled(d, slope="0")),
        "bad.dcm has RescaleSlope 0, which would give every pixel the same value, " + _NOT_HU,
        loads=2,
    ),
    Hostile(
        "intercept-minus-inf",
        _with_bad_slice("bad.dcm", lambda d: rescaled(d, intercept="-inf")),
        f"bad.dcm has RescaleIntercept -inf, which is not a finite number, {_NOT_HU}",
        loads=2,
    ),
    Hostile(
        "slope-1e308",
        _with_bad_slice("bad.dcm", lambda d: rescaled(d, slope="1e308")),
        "bad.dcm has RescaleSlope 1e308 and RescaleIntercept -1024, which would put its pixels "
        "between",
        loads=2,
    ),
    Hostile(
        "padding-covers-image",
        _with_bad_slice("air.dcm", padded_everywhere),
        "that covers every pixel, which would turn the whole slice into air; the slice was "
        "skipped.",
        loads=2,
    ),
    Hostile(
        "real-slice-named-DICOMDIR",
        _renamed_dicomdir,
        "1 file(s) skipped as DICOMDIR index: DICOMDIR.",
        loads=3,
    ),
    Hostile("traversal-names", _traversal, None, loads=3),
    Hostile(
        "truncated-zip",
        _file("cut.zip", lambda files: (z := zip_bytes(files[:3]))[: len(z) // 2]),
        "This zip is damaged and cannot be opened; export the study again.",
    ),
    Hostile(
        "encrypted-members",
        _file("locked.zip", lambda files: mark_encrypted(zip_bytes(files[:3]))),
        "This zip is password-protected. Export the study without a password and upload it again.",
    ),
    Hostile(
        "zip-of-photos",
        lambda tmp, files: photos_zip(tmp),
        "This upload holds no CT images (3 file(s) skipped as not DICOM: beach.png, sunset.jpg, "
        "notes.txt).",
    ),
    Hostile(
        "symlink-members",
        _symlink_zip,
        "2 file(s) skipped as not DICOM: passwd-link, up-link.",
        loads=3,
        hides=("root:",),  # a line of /etc/passwd
    ),
    Hostile(
        "folder-with-symlinks",
        _folder_with_symlinks,
        None,
        loads=3,  # the linked folder's slice would be a fourth
        hides=("passwd-link", "beyond.dcm"),
    ),
    Hostile(
        "tiny-100000-members",
        lambda tmp, files: tiny_members_zip(tmp, 100_000),
        "This zip holds 100000 files, more than the 20000 allowed for one upload.",
    ),
    Hostile(
        "tiny-20000-members",  # the most the limit lets through: each one is looked at
        lambda tmp, files: tiny_members_zip(tmp, 20_000),
        "This upload holds no CT images (20000 file(s) skipped as not DICOM: t000000.dcm, "
        "t000001.dcm, t000002.dcm, …).",
    ),
    Hostile(
        "one-member-listed-1000000-times",
        lambda tmp, files: repeated_entry_zip(tmp, 1_000_000),
        "This zip lists far more files than the 20000 allowed for one upload (its list of files "
        "alone is 48 MB); it was rejected.",
    ),
    Hostile(
        "mr-only",
        _mr_only,
        "This upload holds MR images, not CT. The tool reads head CT only; choose the CT study.",
    ),
    Hostile(
        "mr-beside-ct",
        _mr_beside_ct,
        "Series of other modalities were left out (this tool reads CT only): 2 MR image(s).",
        loads=3,
    ),
    Hostile(
        "enhanced-ct-multi-frame",
        _file("enhanced.dcm", enhanced_ct),
        "This upload holds no CT images (enhanced.dcm is a multi-frame (Enhanced CT) object, "
        "which this tool cannot read yet).",
    ),
    Hostile(
        "multi-frame-beside-slices",
        lambda tmp, files: write_zip([*files, ("mf.dcm", enhanced_ct(files))], tmp / "mf.zip"),
        "mf.dcm is a multi-frame (Enhanced CT) object, which this tool cannot read yet.",
        loads=3,
    ),
    Hostile(
        "single-slice",
        _file("slice.dcm", lambda files: files[0][1]),
        "This series has a single slice: it is not a whole head CT, and study-level scores from "
        "it are unreliable.",
        loads=1,
    ),
    Hostile(
        "random-bytes",
        _file("random.dcm", lambda files: np.random.default_rng(2).bytes(1 << 20)),
        "This upload holds no CT images (1 file(s) skipped as not DICOM: random.dcm).",
    ),
    Hostile(
        "zip-as-dcm-tail-overwritten",
        _zip_as_dcm("tail"),
        "This zip is damaged and cannot be opened; export the study again.",
    ),
    Hostile(
        "zip-as-dcm-head-overwritten",  # the directory survives; the third member too
        _zip_as_dcm("head"),
        "is damaged inside the zip and was skipped.",
        loads=1,
    ),
    Hostile(
        "zip-in-zip",
        lambda tmp, files: write_zip([("inner.zip", zip_bytes(files))], tmp / "outer.zip"),
        "This upload holds no CT images (1 file(s) skipped as a zip inside the upload (not "
        "opened: upload the zip inside on its own): inner.zip).",
    ),
    Hostile(
        "longest-nul-and-control-names",
        _renamed([LONGEST_NAME, "slice\x00.exe", "\x1b[31mred\x07\r\n.dcm"]),
        None,
        loads=3,
    ),
    Hostile(
        "absolute-and-windows-names",
        _renamed(["/etc/x", "C:\\x", "..\\..\\x"]),
        None,
        loads=3,
    ),
    Hostile(
        "sparse-1100MB-file",
        _sparse_dicom,
        "big.dcm is 1100 MB, more than the 512 MB one file may be; it was not read.",
    ),
    Hostile(
        "zip-declares-5000MB",
        _declares_5gb,
        "This zip would unpack to 5000 MB, more than the 4096 MB allowed for one upload.",
    ),
)
