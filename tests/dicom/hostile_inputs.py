"""A small corpus of hostile uploads, built on demand in a test's tmp_path.

Why: the loader reads whatever a user drops on the page. Each function here writes one input
that once cost minutes, gigabytes or a silent wrong answer, so that the tests can show it now
ends in a readable message within bounded time and memory. Nothing is stored in the repository:
a few real slices (given by the caller) and pydicom, zipfile and Pillow build everything.
"""

from __future__ import annotations

import struct
from pathlib import Path

from dicom_helpers import Files, read_ds, write_ds, write_zip
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

HUGE_SIDE = 30_000  # declared Rows and Columns of the RLE header case


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
