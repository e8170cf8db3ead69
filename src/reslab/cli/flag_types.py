"""argparse types that bound a flag's value when it is parsed, before anything is allocated
or started: `--scales 100000` would otherwise ask for a 143 GB image, `--workers -1` or
`--top -1` end in a traceback (issue 17). A bad value is argparse's one-line usage error."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from reslab.interop import MAX_INPUT_SIDE

#: The most DataLoader workers a command starts (each is a process holding a decoder).
MAX_WORKERS = 256


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse `type` accepting integers in [low, high] (no upper bound if None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if value < low or (high is not None and value > high):
            limits = f"from {low} to {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be an integer {limits}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in some messages
    return parse


#: an image side in pixels: a test scale, a resize, a crop or an export input.
image_side = int_in(1, MAX_INPUT_SIDE)
#: a number of DataLoader workers.
worker_count = int_in(0, MAX_WORKERS)
