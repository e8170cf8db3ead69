"""Decoding one image file to the uint8 RGB tensor (3, H, W) that every reader uses: the
CIFAR-style folders (`reslab.data.folder`), ImageNet folders (`ImageFolderDataset`, for
training and `reslab eval`) and `reslab predict`.

- The pixel count is read from the file's header before anything is decoded (Pillow's
  `Image.open` reads only the header): an image of more than `max_image_pixels()` pixels
  (by default Pillow's MAX_IMAGE_PIXELS, 89,478,485) is refused, so a 700-byte JPEG that
  claims 20000x20000 never allocates gigabytes. `--max-image-pixels N` or
  `RESLAB_MAX_IMAGE_PIXELS=N` raises the limit (an environment variable, so DataLoader
  workers and `--jobs` processes, spawned or forked, share it).
- The pixels are decoded by torchvision.io (JPEG, PNG, GIF, WebP) in RGB. 16-bit images
  (16-bit PNGs) are scaled to 8 bits by keeping the top byte (as torchvision's `to_dtype`
  scales uint16), so they mean what 8-bit images mean; an animated GIF gives its first frame.
"""

from __future__ import annotations

import io
import os
import threading
import warnings

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image

from reslab.data.scan import SKIP_HINT, read_regular_file
from reslab.errors import ReslabError

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "MAX_PIXELS_ENV", "decode_image_bytes",
           "decode_image_file", "image_size", "max_image_pixels", "set_max_image_pixels"]

#: Pillow's default `Image.MAX_IMAGE_PIXELS` (1024 * 1024 * 1024 // 4 // 3).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
MAX_PIXELS_ENV = "RESLAB_MAX_IMAGE_PIXELS"
#: The formats torchvision.io decodes; Pillow is asked to recognise only these.
FORMATS = ("JPEG", "PNG", "GIF", "WEBP")

_pillow_limit = threading.Lock()


def max_image_pixels() -> int:
    """The largest image (width x height x frames) decoded: $RESLAB_MAX_IMAGE_PIXELS, or
    DEFAULT_MAX_IMAGE_PIXELS."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ReslabError(f"{MAX_PIXELS_ENV}={raw!r} is not a pixel count >= 1: set it to a "
                          "whole number such as 400000000, or unset it")
    return n


def set_max_image_pixels(n: int | None) -> None:
    """Set the limit of `max_image_pixels` for this process and the processes it starts;
    None restores the default."""
    if n is None:
        os.environ.pop(MAX_PIXELS_ENV, None)
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ReslabError(f"--max-image-pixels must be a whole number >= 1, got {n!r}")
    os.environ[MAX_PIXELS_ENV] = str(n)


def image_size(data: bytes | bytearray | memoryview, name: str,
               max_pixels: int | None = None) -> tuple[int, int, int]:
    """(width, height, frames) of an encoded image from its header alone (frames > 1 only
    for animated GIFs, which torchvision decodes whole). ReslabError naming `name` if the
    header is not one of a JPEG, PNG, GIF or WebP image, or (for sizes over twice Pillow's
    own limit, which it refuses to report) if the image is over `max_pixels`."""
    limit = max_image_pixels() if max_pixels is None else max_pixels
    try:
        return _pillow_size(data)
    except Image.DecompressionBombError:
        if Image.MAX_IMAGE_PIXELS is not None and limit <= 2 * Image.MAX_IMAGE_PIXELS:
            raise _too_big(name, f"more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels",
                           limit) from None
        with _pillow_limit:  # a higher limit was asked for: ask Pillow with ours
            old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, limit
            try:
                return _pillow_size(data)
            except Image.DecompressionBombError:
                raise _too_big(name, f"more than {2 * limit:,} pixels", limit) from None
            except Exception as e:
                raise _unreadable(name, e) from None
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except Exception as e:  # Pillow raises many types for a bad header
        raise _unreadable(name, e) from None


def _pillow_size(data: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            width, height = im.size
            frames = int(getattr(im, "n_frames", 1)) if im.format == "GIF" else 1
    return width, height, frames


def _too_big(name: str, size: str, limit: int) -> ReslabError:
    return ReslabError(
        f"image {name} is {size}, over the limit of {limit:,} (a decompression bomb?) and "
        "was not decoded: if it is a genuine image, raise the limit with "
        f"--max-image-pixels N (or {MAX_PIXELS_ENV}=N)"
    )


def _unreadable(name: str, e: BaseException) -> ReslabError:
    if isinstance(e, UnidentifiedImageError):  # its message shows a BytesIO's address
        why = "not a JPEG, PNG, GIF or WebP image"
    else:
        why = (str(e).splitlines() or [""])[0] or type(e).__name__
    return ReslabError(f"cannot decode image {name} ({why})")


def decode_image_bytes(data: bytes | bytearray, name: str,
                       max_pixels: int | None = None) -> torch.Tensor:
    """Decode an encoded image to uint8 RGB (3, H, W) after checking its header's pixel
    count against `max_pixels` (default `max_image_pixels()`). ReslabError naming `name`
    (one line) for an image too big or that cannot be decoded."""
    limit = max_image_pixels() if max_pixels is None else max_pixels
    width, height, frames = image_size(data, name, limit)
    if width * height * frames > limit:
        what = f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
        raise _too_big(name, f"{what} = {width * height * frames:,} pixels", limit)
    buf = data if isinstance(data, bytearray) else bytearray(data)
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders (for TorchCodec) with one warning
            # per call; they still work.
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
            img = decode_image(torch.frombuffer(buf, dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as e:
        raise _unreadable(name, e) from None
    if img.dim() == 4:  # an animated GIF: its first frame, as Pillow shows it
        img = img[0]
    if img.dtype != torch.uint8:
        # 16-bit samples (uint16; int32 in older torchvision): keep the top byte, so that
        # 65535 -> 255 as torchvision's to_dtype(uint16 -> uint8, scale=True) does.
        img = (img.to(torch.int32) >> 8).to(torch.uint8)
    return img


def decode_image_file(path: str | os.PathLike, max_pixels: int | None = None, *,
                      hint: str | None = SKIP_HINT) -> torch.Tensor:
    """Read and decode an image file to uint8 RGB (3, H, W) (see `decode_image_bytes`);
    a FIFO or device is refused without blocking, its message ending in `hint` (how the
    calling command skips it; None: none). ReslabError naming the file."""
    try:
        data = read_regular_file(path, hint=hint)
    except OSError as e:  # missing, forbidden, ...
        raise ReslabError(f"cannot read image {os.fspath(path)} ({e.strerror or e})") from None
    return decode_image_bytes(data, os.fspath(path), max_pixels)
