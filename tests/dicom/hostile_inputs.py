"""A small corpus of hostile uploads, built on demand in a test's tmp_path.

Why: the loader reads whatever a user drops on the page. Each function here writes one input
that once cost minutes, gigabytes or a silent wrong answer, so that the tests can show it now
ends in a readable message within bounded time and memory. Nothing is stored in the repository:
a few real slices (given by the caller) and pydicom, zipfile and Pillow build everything.
"""

from __future__ import annotations

import resource
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from dicom_helpers import Files, read_ds, write_ds, write_zip
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless


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
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), len(local), 0)
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
