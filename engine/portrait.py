"""Reading portrait files: size limits, the decoders we allow, orientation and colour.

Everything a user uploads passes through here before any face work: files and images over
the limits are refused from their size and header, before a pixel is decoded, and large
images are shrunk as they decode so a 40 MP photo never sits in memory at full size twice.
"""

from __future__ import annotations

import io
import math
import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from emolive.engine.errors import BadInputError

MAX_PIXELS = 40_000_000
# Larger portraits are shrunk to this long side as they are decoded: the engine's frames are
# at most 1024 px, so more pixels only cost memory (a 40 MP RGB image is 120 MB per copy).
WORK_LONG_SIDE = 4096
MAX_FILE_BYTES = 256 * 1024 * 1024
MIN_IMAGE_SIDE = 64

# Only these decoders run: Pillow's others (EPS, PSD, ...) are attack surface we don't need.
# Phones' multi-picture JPEGs (MPO) come in through the JPEG decoder.
_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
# Portraits over WORK_LONG_SIDE are decoded one at a time: each holds its full-size pixels
# until shrunk, and concurrent decodes (uploads, rigs built at new sizes) would add up.
_BIG_DECODE = threading.Lock()


def load_portrait(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as upright RGB uint8; raise BadInputError if it cannot be used."""
    return decode_portrait(read_portrait(Path(path)), Path(path).name)


def read_portrait(path: Path) -> bytes:
    """The file's bytes; BadInputError if it is missing or over MAX_FILE_BYTES."""
    name = path.name
    if not path.is_file():
        raise BadInputError(f"{name}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise BadInputError(f"{name}: file is larger than {MAX_FILE_BYTES >> 20} MB")
    return path.read_bytes()


def decode_portrait(data: bytes, name: str) -> np.ndarray:
    """``data`` (a file named ``name``) as upright RGB uint8; BadInputError if unusable."""
    # Pillow's bomb guard fires (as a warning, then an error) only far above our limit,
    # but a file that trips it is a file we refuse for the same reason.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=_FORMATS) as im:
                _check_header(im.size, name)  # Image.open read only the header
                if max(im.size) <= WORK_LONG_SIDE:
                    rgb = _to_rgb(ImageOps.exif_transpose(im))
                else:
                    with _BIG_DECODE:
                        small = _shrunk(im)
                        im.close()  # drops the full-size pixels now, not at the end of the block
                        rgb = _to_rgb(ImageOps.exif_transpose(small))
                    del small
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadInputError(f"{name}: image is over {MAX_PIXELS // 1_000_000} megapixels")
        except BadInputError:
            raise
        except Exception:  # any decoder failure means the same thing to the user
            raise BadInputError(
                f"{name}: is not a readable image (PNG, JPEG, WebP or BMP)"
            ) from None
    return rgb


def _check_header(size: tuple[int, int], name: str) -> None:
    """Refuse by header size, before any pixel is decoded."""
    w, h = size
    if w * h > MAX_PIXELS:
        raise BadInputError(
            f"{name}: image is over {MAX_PIXELS // 1_000_000} megapixels ({w}x{h})"
        )
    if min(w, h) < MIN_IMAGE_SIDE:
        raise BadInputError(f"{name}: image is too small to hold a face ({w}x{h})")


def _shrunk(im: Image.Image) -> Image.Image:
    """A new image: ``im`` decoded with its long side at most WORK_LONG_SIDE, averaging
    blocks of pixels. JPEGs decode at a reduced scale (Pillow's draft mode); other formats
    decode at full size, and the caller closes ``im`` to free those pixels."""
    factor = math.ceil(max(im.size) / WORK_LONG_SIDE)
    im.draft(None, (im.width // factor, im.height // factor))
    if im.mode in ("1", "P"):  # Pillow cannot average palette indices
        im = im.convert("RGBA" if im.has_transparency_data else "RGB")
    elif im.mode.startswith("I;16"):  # nor reduce 16-bit greys
        im = im.convert("I")
    return im.reduce(math.ceil(max(im.size) / WORK_LONG_SIDE))


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB uint8, alpha flattened onto white."""
    if im.mode.startswith("I") or im.mode == "F":
        # Pillow's own conversion clips 16-bit values at 255 instead of rescaling them.
        grey = np.asarray(im, dtype=np.float32)
        if im.mode.startswith("I;16") or grey.max() > 255:
            grey = grey / 257.0
        grey = np.clip(grey, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
