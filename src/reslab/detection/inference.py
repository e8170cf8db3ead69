"""A trained detector's checkpoint -> a ready model; detections of images and of a split.

`load_detector(weights)` is what `reslab detect eval`, `detect predict`, `export` and the
training loop's evaluation use; a classifier's checkpoint is refused in one line.
`detect_dataset` runs a split in batches (this rank's shard under torchrun, gathered on
every rank) and returns per image {"boxes" xyxy pixels of the original image, "scores",
"labels" 1-based}, the input of `reslab.detection.evaluate.evaluate_detections`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from reslab.detection.models import DetectorSpec, detector_from_spec, is_detector_spec
from reslab.engine import Engine
from reslab.errors import ReslabError
from reslab.interop import load_weights
from reslab.train.checkpoint import Checkpoint
from reslab.train.distributed import World


@dataclass
class LoadedDetector:
    """A detector ready to run: the model (eval mode), its class names (label k is
    `classes[k - 1]`), its spec and the checkpoint it came from."""

    model: nn.Module
    classes: list[str]
    spec: DetectorSpec
    checkpoint: Checkpoint

    @property
    def name(self) -> str:
        return self.spec.name


def load_detector(weights: str | os.PathLike) -> LoadedDetector:
    """Read a `reslab detect train` checkpoint (weights_only) and build its detector, with
    the settings it was trained with (the spec's; test-time NMS: the run's `--test-nms`,
    torchvision's 0.5 for checkpoints from before it was recorded, as they were run)."""
    ckpt = Checkpoint.load(weights)
    if not is_detector_spec(ckpt.model_spec):
        raise ReslabError(
            f"{weights} is a classifier checkpoint ({ckpt.model_spec.get('name', '?')}), not a "
            "detector: give the last.pt or best.pt of `reslab detect train` (a classifier "
            "is evaluated with `reslab eval`)")
    model = detector_from_spec(ckpt.model_spec, str(weights))
    spec: DetectorSpec = model.reslab_spec
    if spec.num_classes != len(ckpt.classes) + 1:
        raise ReslabError(f"{weights} names {len(ckpt.classes)} classes but its detector has "
                          f"{spec.num_classes - 1}: the file is inconsistent")
    load_weights(model, ckpt.model)
    return LoadedDetector(model.eval(), list(ckpt.classes), spec, ckpt)


def set_test_size(model: nn.Module, min_size: int | None, max_size: int | None) -> None:
    """Test at another image scale than the training one (shorter side `min_size`, longer
    side at most `max_size`); None keeps the detector's."""
    if min_size is not None:
        model.transform.min_size = (int(min_size),)
    if max_size is not None:
        model.transform.max_size = int(max_size)


def set_test_nms(model: nn.Module, nms: float | None) -> float:
    """Per-class NMS of the detections at IoU `nms` (Faster R-CNN's 0.3, Appendix A); None
    keeps the detector's. Returns the IoU in use."""
    if nms is not None:
        model.roi_heads.nms_thresh = float(nms)
    return float(model.roi_heads.nms_thresh)


def as_model_input(images: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 (3, H, W) images -> float [0, 1] on `device`, as FasterRCNN's transform takes
    them (it subtracts the mean, divides by the std and resizes)."""
    return [img.to(device, non_blocking=True).float().div_(255) for img in images]


@torch.no_grad()
def detect(model: nn.Module, images: Sequence[torch.Tensor], engine: Engine) -> list[dict]:
    """Detections of uint8 images (any sizes) in original-image pixels, on the CPU."""
    with engine.autocast():
        outputs = model(as_model_input(images, engine.device))
    return [{"boxes": o["boxes"].float().cpu(), "scores": o["scores"].float().cpu(),
             "labels": o["labels"].cpu()} for o in outputs]


def _readable(dataset, i: int) -> torch.Tensor | None:
    read = getattr(dataset, "readable_image", None)
    return read(i) if read is not None else dataset[i][0]


def detect_dataset(model: nn.Module, dataset, engine: Engine, batch_size: int = 2,
                   world: World | None = None, progress: bool = False,
                   stop: Callable[[], bool] | None = None) -> list[dict | None] | None:
    """Detections of every image of `dataset` (a DetectionDataset), in its order; None for
    an image that cannot be read when the dataset was opened with skip_bad (evaluation
    leaves it out: `reslab.detection.evaluate.scored_images`). Under torchrun each rank
    runs its shard (every world.size-th image) and all ranks get all. None (the whole
    result) if `stop()` (asked between batches; a world of one only) turned true."""
    world = world or World()
    was_training = model.training
    model.eval()
    mine = list(range(world.rank, len(dataset), world.size))
    bar = None
    if progress and world.is_main:
        from tqdm import tqdm  # late: only with a progress bar

        bar = tqdm(total=len(mine), desc="detect", unit="img", leave=False)
    local: list[dict | None] = []
    try:
        for k in range(0, len(mine), batch_size):
            if stop is not None and stop() and not world.distributed:
                return None
            chunk = mine[k : k + batch_size]
            images = [_readable(dataset, i) for i in chunk]
            found = iter(detect(model, [im for im in images if im is not None], engine)
                         if any(im is not None for im in images) else [])
            local += [None if im is None else next(found) for im in images]
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    if not world.distributed:
        return local
    gathered: list = [None] * world.size
    dist.all_gather_object(gathered, (mine, local))
    out: list[dict | None] = [None] * len(dataset)
    for indices, dets in gathered:
        for i, d in zip(indices, dets, strict=True):
            out[i] = d
    return out
