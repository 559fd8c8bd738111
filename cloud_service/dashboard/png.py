"""PNG images of uint8 arrays with the standard library's zlib: hard examples' raw inputs for a browser.

Only what raw inputs need: 8-bit greyscale (``H×W`` or ``H×W×1``), RGB (``H×W×3``) or RGBA
(``H×W×4``), no interlacing, filter type 0 on every row. An image library would add a
dependency for a few dozen lines.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)
MAX_SIDE = 4096


def png_bytes(image: np.ndarray) -> bytes:
    """The PNG file of ``image``; ValueError if it is not a uint8 picture this module writes."""
    if image.dtype != np.uint8:
        raise ValueError(f"an image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in _COLOUR_TYPES:
        raise ValueError(f"an image is H×W with 1, 3 or 4 channels, got shape {list(image.shape)}")
    height, width, channels = image.shape
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise ValueError(f"image sides must be 1..{MAX_SIDE}, got {height}×{width}")
    rows = np.ascontiguousarray(image).reshape(height, width * channels)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPES[channels], 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw.tobytes(), 9)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
