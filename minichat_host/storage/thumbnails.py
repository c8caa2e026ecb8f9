"""WebP preview thumbnails of image attachments (Pillow); also the check that an image decodes at all."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from PIL import Image, ImageOps

THUMBNAIL_SIDE: Final = 128
THUMBNAIL_MAX_BYTES: Final = 131_072
# Refuse images whose pixel count would need hundreds of MB once decoded (decompression bombs).
MAX_PIXELS: Final = 64_000_000
_FORMATS: Final = frozenset({"PNG", "JPEG", "WEBP", "GIF"})


class InvalidImage(ValueError):
    """The bytes are not a PNG, JPEG, WebP or GIF image that can be decoded."""


@dataclass(frozen=True, slots=True)
class Thumbnail:
    data: bytes
    width: int
    height: int
    content_type: str = "image/webp"


def make_thumbnail(
    path: Path, *, side: int = THUMBNAIL_SIDE, max_bytes: int = THUMBNAIL_MAX_BYTES
) -> Thumbnail:
    """A WebP that fits in `side` x `side` (aspect ratio kept, never enlarged), at most `max_bytes` long.

    Raises InvalidImage when the file does not decode as one of the allowed image formats.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(Path(path)) as image:
                if image.format not in _FORMATS:
                    raise InvalidImage(f"unsupported image format {image.format!r}")
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise InvalidImage(f"image of {width}x{height} pixels is too large to decode")
                image.draft("RGB", (side, side))  # JPEG decodes at a reduced scale: much less memory
                frame = ImageOps.exif_transpose(image)
                frame.thumbnail((side, side), Image.Resampling.LANCZOS)
                if frame.mode not in ("RGB", "RGBA"):
                    frame = frame.convert(
                        "RGBA" if "A" in frame.getbands() or "transparency" in frame.info else "RGB"
                    )
                return _encode(frame, max_bytes)
    except InvalidImage:
        raise
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise InvalidImage(f"the file is not a readable image: {exc}") from None


def _encode(frame: Image.Image, max_bytes: int) -> Thumbnail:
    for quality in (80, 60, 40, 20):
        buffer = io.BytesIO()
        frame.save(buffer, format="WEBP", quality=quality, method=4)
        data = buffer.getvalue()
        if len(data) <= max_bytes:
            return Thumbnail(data=data, width=frame.width, height=frame.height)
    raise InvalidImage(f"no thumbnail under {max_bytes} bytes")
