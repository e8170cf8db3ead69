"""argparse types that bound a flag's value when it is parsed, before anything is allocated
or started: `--scales 100000` would otherwise ask for a 143 GB image, `--workers -1` or
`--top -1` end in a traceback (issue 17). A bad value is argparse's one-line usage error."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from reslab.detection.config import MAX_BATCH, MAX_PER_IMAGE, MAX_SIDE, MIN_SIDE
from reslab.interop import MAX_INPUT_SIDE
from reslab.train.recipes import MAX_WORKERS

__all__ = ["MAX_WORKERS", "count", "detection_batch", "image_side", "int_in", "long_side",
           "per_image", "short_side", "worker_count"]


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
#: iterations, milestones, an evaluation interval: at least 1.
count = int_in(1)
#: a detector's shorter image side, and its longer side at most (DetectConfig's bounds).
short_side = int_in(*MIN_SIDE)
long_side = int_in(*MAX_SIDE)
#: images per detection mini-batch (training or evaluation).
detection_batch = int_in(1, MAX_BATCH)
#: proposals kept, anchors and RoIs sampled per image.
per_image = int_in(1, MAX_PER_IMAGE)
