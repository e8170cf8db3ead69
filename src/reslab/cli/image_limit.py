"""`--max-image-pixels N`, the decompression-bomb limit of every image decoder
(`reslab.data.decode`), for the commands that read images: train, eval, predict, reproduce.

The value is set when the flag is parsed, as RESLAB_MAX_IMAGE_PIXELS, so that DataLoader
workers and `--jobs` processes see it too.
"""

from __future__ import annotations

import argparse

from reslab.data.decode import DEFAULT_MAX_IMAGE_PIXELS, MAX_PIXELS_ENV, set_max_image_pixels


def _pixel_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


_pixel_count.__name__ = "int"  # argparse names the type in some messages


class _SetLimit(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        set_max_image_pixels(values)
        setattr(namespace, self.dest, values)


def add_max_image_pixels(parser: argparse.ArgumentParser) -> None:
    """Add `--max-image-pixels N` to a subcommand's parser."""
    parser.add_argument(
        "--max-image-pixels", type=_pixel_count, action=_SetLimit, default=None, metavar="N",
        help="refuse images of more than N pixels (width x height, read from the file's "
        "header before decoding; default Pillow's limit, "
        f"{DEFAULT_MAX_IMAGE_PIXELS:,}, or ${MAX_PIXELS_ENV})")
