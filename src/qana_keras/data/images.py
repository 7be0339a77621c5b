"""Strict image decoding: a file is used only when it decodes completely to 3-channel RGB (truncated JPEGs,
which decoders fill in silently, are caught too)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from qana_keras.data.checks import DatasetError

_MODE_NAMES = {"L": "grayscale", "LA": "grayscale with alpha", "1": "black and white", "P": "palette",
               "RGBA": "RGB with alpha", "CMYK": "CMYK", "I;16": "16-bit grayscale", "I": "32-bit grayscale",
               "F": "float grayscale", "YCbCr": "YCbCr"}


class _BadImage(Exception):
    """Internal: the reason an image file is unusable."""


_PROBE = bytes(range(1, 255)) * 4


def _jpeg_ends_early(data: bytes, pixels: np.ndarray) -> bool:
    """True when the JPEG ``data`` (decoded to ``pixels``) has fewer coded blocks than the image needs.

    libjpeg fills the blocks missing after a premature end marker with zeros and only warns, which PIL
    and OpenCV ignore, so such a file decodes without error. A complete JPEG's pixels do not depend on
    bytes after its last block; a partial one decodes the probe bytes as its missing blocks and changes.
    """
    end = data.rstrip(b"\0")
    probed = end[:-2] + _PROBE + end[-2:]  # end[-2:] is FFD9 (checked before)
    try:
        with Image.open(io.BytesIO(probed)) as img:
            img.load()
            other = np.asarray(img)
    except Exception:  # the probe bytes made the missing blocks undecodable: they were being read
        return True
    return other.shape != pixels.shape or not np.array_equal(other, pixels)


def _next_marker(data: bytes, i: int) -> int:
    """Index of the first marker at or after ``i`` in entropy-coded data (skipping FF00 stuffing and RSTn)."""
    while True:
        i = data.find(b"\xff", i)
        if i < 0 or i + 1 >= len(data):
            return len(data)
        if data[i + 1] == 0 or 0xD0 <= data[i + 1] <= 0xD7:
            i += 2
            continue
        return i


def _progressive_scans_missing(data: bytes) -> bool:
    """True when a progressive JPEG lacks scans: some coefficient of some component never gets its last bit.

    A progressive file cut between two scans decodes (blurrier) without even a warning, so the scan
    headers are checked: a complete file brings every coefficient 0-63 of every component to full
    precision (a scan with Al = 0).
    """
    i, components, done = 2, [], set()
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0xD9:
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        segment = data[i + 4:i + 2 + length]
        if marker in (0xC0, 0xC1, 0xC3):
            return False  # sequential: the probe of _jpeg_ends_early covers it
        if marker == 0xC2 and len(segment) >= 6:
            components = [segment[6 + 3 * c] for c in range(segment[5]) if 6 + 3 * c < len(segment)]
        if marker == 0xDA and segment:
            n = segment[0]
            if len(segment) >= 4 + 2 * n:
                ids = [segment[1 + 2 * c] for c in range(n)]
                ss, se, approximation = segment[1 + 2 * n], segment[2 + 2 * n], segment[3 + 2 * n]
                if approximation & 0x0F == 0:
                    done.update((c, k) for c in ids for k in range(ss, se + 1))
            i = _next_marker(data, i + 2 + length)
            continue
        i += 2 + length
    return bool(components) and any((c, k) not in done for c in components for k in range(64))


def _decode(path: Path) -> np.ndarray:
    """Decode ``path`` completely into HxWx3 uint8 RGB, or raise _BadImage saying why not."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _BadImage(f"cannot be read ({e.strerror or e})") from None
    if not data:
        raise _BadImage("is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode != "RGB":
                name = _MODE_NAMES.get(img.mode, "not RGB")
                raise _BadImage(f"is not RGB: mode {img.mode} ({name}); convert it to 3-channel RGB "
                                "or replace it with the original")
            # PIL decodes what it can of a truncated JPEG without complaint when a decoder leaves the
            # tail unread, so the end-of-image marker is checked too. Zero padding after it is legal.
            if img.format == "JPEG" and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
                raise _BadImage("is truncated: the JPEG does not end with the end-of-image marker FFD9")
            img.load()  # the full decode; raises on truncated or corrupt data
            array = np.array(img, dtype=np.uint8)
        if img.format == "JPEG" and (_jpeg_ends_early(data, array) or _progressive_scans_missing(data)):
            raise _BadImage("is truncated: its image data stops before the last block (a partial file that "
                            "still ends with the JPEG end marker)")
    except _BadImage:
        raise
    except Image.UnidentifiedImageError:
        raise _BadImage("cannot be decoded: not a recognisable image file (corrupt, or not JPEG/PNG)") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad data
        raise _BadImage(f"cannot be decoded ({type(e).__name__}: {e})") from None
    if array.ndim != 3 or array.shape[2] != 3:
        raise _BadImage(f"decodes to shape {array.shape}, not HxWx3")
    return array


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file completely into an HxWx3 uint8 RGB array.

    Raises DatasetError naming the file when it is unreadable, corrupt, truncated or not RGB.
    """
    path = Path(path)
    try:
        return _decode(path)
    except _BadImage as e:
        raise DatasetError(f"{path} {e}; replace it with a good copy from the original release "
                           "(re-download or re-extract it)") from None


def image_problem(path: Path) -> str | None:
    """Why the image at ``path`` is unusable (see ``read_rgb``), or None when it decodes."""
    try:
        _decode(path)
    except _BadImage as e:
        return str(e)
    return None
