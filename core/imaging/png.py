"""Images as PNG bytes, lossless: a viewer in the browser shows exactly the windowed pixels
(JPEG would smear the few grey levels between blood and brain).

Compression level 1: about 7 ms and 50 kB for a 512 × 512 slice against 40 ms and 41 kB at
the default, so a whole study is re-encoded in well under a second when the window changes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(image: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 grey (H, W), RGB (H, W, 3) or RGBA (H, W, 4) → PNG bytes.

    >>> data = png_bytes(np.zeros((4, 4), np.uint8))
    >>> data[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    >>> Image.open(io.BytesIO(png_bytes(np.zeros((2, 3, 4), np.uint8)))).mode
    'RGBA'
    """
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 (H, W[, C]) image, got {array.dtype} {array.shape}")
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG", compress_level=compress_level)
    return out.getvalue()
