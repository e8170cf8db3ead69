"""Trained weights -> a ready model with its preprocessing, classes and testing protocol.

`load_model(weights)` is what `reslab eval`, `predict`, `responses` and the experiments
use: a reslab checkpoint brings its network, mean, class names and recipe (CIFAR: the
single original view, Sec. 4.2; ImageNet: centre crop / 10-crop / multi-scale at the
run's sizes, Sec. 3.4); foreign weights (torchvision, timm, safetensors,
pytorch_resnet_cifar10) need the network's name and the data's classes and mean.
`test_scores` runs a protocol and returns per-image class probabilities, so one model and
an ensemble (the mean of its members' probabilities, Table 5) are scored alike.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from reslab.data import Preprocess, per_pixel_mean
from reslab.data.imagenet import IMAGENET_MEAN, ImageFolderDataset
from reslab.engine import Engine
from reslab.errors import ReslabError
from reslab.evaluate import EvalResult, evaluate_imagenet_scores, topk_correct
from reslab.interop import load_weights, model_from_checkpoint, read_file
from reslab.models.registry import build, resolve
from reslab.train.checkpoint import FORMAT, Checkpoint
from reslab.train.recipes import IMAGENET_RECIPE


@dataclass
class LoadedModel:
    """A model ready to test: network, preprocessing, class names and its protocol."""

    model: nn.Module
    preprocess: Preprocess
    classes: list[str]
    recipe: str  # "cifar" (single original view) or "imagenet" (crops / scales)
    test_resize: int | None = None  # imagenet: shorter side before the crops
    crop: int | None = None  # imagenet: crop size
    checkpoint: Checkpoint | None = None

    @property
    def name(self) -> str:
        return self.model.reslab_spec.name

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(H, W) of a per-pixel mean (the training input size), None for per-channel."""
        mean = self.preprocess.mean
        return None if tuple(mean.shape[1:]) == (1, 1) else tuple(mean.shape[1:])


def load_model(weights: str | os.PathLike, model: str | None = None, *,
               classes: Sequence[str] | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, train_images: torch.Tensor | None = None,
               recipe: str | None = None) -> LoadedModel:
    """Read `weights` once (safely) and build what they describe.

    A reslab checkpoint needs nothing else (`model`, if given, must agree). Foreign weights
    need `model` and `classes`, and `mean`/`std` (per-channel, [0, 1] units) or
    `train_images` (uint8, for the paper's per-pixel training mean); their protocol is the
    one of the net's family unless `recipe` says otherwise.
    """
    obj = read_file(weights)
    if obj.get("format") == FORMAT:
        ckpt = Checkpoint.load(obj)
        net, _ = model_from_checkpoint(obj, where=weights)
        if model and resolve(model).name != net.reslab_spec.name:
            raise ReslabError(f"{weights} holds a {net.reslab_spec.name}, not {model}")
        config = ckpt.config or {}
        rec = recipe or config.get("recipe") or _family_recipe(net)
        sizes = {**(config.get("extra") or {}), **config}  # older checkpoints: `extra`
        loaded = LoadedModel(net, Preprocess.from_dict(ckpt.preprocess), list(ckpt.classes),
                             rec, sizes.get("test_resize"), sizes.get("crop"), ckpt)
    else:
        if not model:
            raise ReslabError(f"{weights} is not a reslab checkpoint: say which network it is "
                              "with --model")
        if classes is None:
            raise ReslabError("foreign weights need --data to know the classes")
        net = load_weights(build(resolve(model, len(classes))), obj, where=weights)
        if mean is not None or train_images is None:
            pre = Preprocess(torch.tensor(mean if mean is not None else IMAGENET_MEAN),
                             None if std is None else torch.tensor(std))
        else:
            pre = Preprocess(per_pixel_mean(train_images),
                             None if std is None else torch.tensor(std))
        loaded = LoadedModel(net, pre, list(classes), recipe or _family_recipe(net))
    if loaded.recipe == "imagenet":
        loaded.test_resize = loaded.test_resize or IMAGENET_RECIPE["test_resize"]
        loaded.crop = loaded.crop or IMAGENET_RECIPE["crop"]
    fc = getattr(net, "fc", None)
    if isinstance(fc, nn.Linear) and fc.out_features != len(loaded.classes):
        raise ReslabError(f"{weights} names {len(loaded.classes)} classes but its classifier "
                          f"has {fc.out_features} outputs: the file is inconsistent")
    stats = [loaded.preprocess.mean] + ([] if loaded.preprocess.std is None
                                        else [loaded.preprocess.std])
    if not all(bool(t.isfinite().all()) for t in stats):
        raise ReslabError(f"{weights} holds a non-finite (NaN or inf) input mean or std: the "
                          "file is damaged")
    return loaded


def _family_recipe(net: nn.Module) -> str:
    return "imagenet" if net.reslab_spec.family == "imagenet" else "cifar"


def check_ensemble(members: Sequence[LoadedModel], files: Sequence[str | os.PathLike]) -> None:
    """ReslabError naming the first member (`files[i]`) whose classes or testing protocol
    differ from the first's: an ensemble averages its members' probabilities class by class
    over the same views (Table 5), so the members must share both. The protocol is the
    recipe and, for ImageNet, the test sizes (shorter side, crop); CIFAR members test the
    original view (`cifar_scores` refuses a member trained on another input size)."""
    def protocol(m: LoadedModel) -> tuple:
        return ("imagenet", m.test_resize, m.crop) if m.recipe == "imagenet" else ("cifar",)

    first = members[0]
    for m, path in zip(members[1:], files[1:], strict=True):
        if list(m.classes) != list(first.classes):
            raise ReslabError(f"{path} was trained on other classes ({len(m.classes)}, e.g. "
                              f"{m.classes[:3]}) than {files[0]} ({len(first.classes)}, e.g. "
                              f"{first.classes[:3]}): ensemble members must share their "
                              "classes")
        if protocol(m) != protocol(first):
            raise ReslabError(f"{path} is tested with another protocol ({_said(protocol(m))}) "
                              f"than {files[0]} ({_said(protocol(first))}): ensemble members "
                              "must share it (--recipe, --test-resize and --crop set it for "
                              "all)")


def _said(protocol: tuple) -> str:
    if protocol[0] == "imagenet":
        return f"ImageNet: crop {protocol[2]} of shorter side {protocol[1]}"
    return "CIFAR: the single original view"


def check_classes(loaded: LoadedModel, data_classes: Sequence[str], data_name: str) -> None:
    """ReslabError if the data has another number of classes than the weights; a warning if
    the names differ (the labels would then mean other things)."""
    if len(loaded.classes) != len(data_classes):
        raise ReslabError(f"{loaded.name} was trained on {len(loaded.classes)} classes, "
                          f"{data_name} has {len(data_classes)}")
    if list(loaded.classes) != list(data_classes):
        differ = [f"{a!r}/{b!r}" for a, b in zip(loaded.classes, data_classes, strict=True)
                  if a != b]
        warnings.warn(f"the class names of {data_name} differ from the weights' "
                      f"({len(differ)} of {len(data_classes)}, e.g. {', '.join(differ[:3])}): "
                      "errors are counted by label index", stacklevel=2)


@torch.no_grad()
def cifar_scores(loaded: LoadedModel, images: torch.Tensor, engine: Engine,
                 batch_size: int = 500) -> torch.Tensor:
    """Class probabilities (N, K) of uint8 images under the single original view (Sec. 4.2);
    images must have the training size."""
    size = loaded.input_size
    if size is not None and tuple(images.shape[-2:]) != size:
        raise ReslabError(f"{loaded.name} was trained on {size[0]}x{size[1]} images; these are "
                          f"{images.shape[-2]}x{images.shape[-1]} (the CIFAR protocol tests "
                          "the original view: resize the data, or use an image folder with "
                          "--recipe imagenet)")
    model = engine.prepare(loaded.model).eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = loaded.preprocess(images[i : i + batch_size].to(engine.device))
        out.append(engine(model, x).float().softmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, len(loaded.classes))


def imagenet_scores(loaded: LoadedModel, val: ImageFolderDataset, engine: Engine,
                    crops: int = 1, scales: Sequence[int] | None = None,
                    images_per_batch: int = 25, workers: int = 0) -> torch.Tensor:
    """Class probabilities (N, K) of an image folder split under Sec. 3.4's protocols:
    centre crop (crops=1), 10-crop (crops=10) or multi-scale (`scales`)."""
    model = engine.prepare(loaded.model).eval()
    return evaluate_imagenet_scores(
        model, val, crops=crops, scales=scales, device=engine.device,
        normalize=loaded.preprocess, resize=loaded.test_resize, crop=loaded.crop,
        images_per_batch=images_per_batch, workers=workers, autocast_dtype=engine.dtype)


def errors_of(scores: torch.Tensor, labels: torch.Tensor) -> EvalResult:
    """Top-1/top-5 error and the loss (NLL of the probabilities) of (N, K) probabilities."""
    n = int(labels.numel())
    if n == 0:
        raise ReslabError("nothing to evaluate: the split is empty")
    correct = topk_correct(scores, labels, (1, 5))
    loss = float(torch.nn.functional.nll_loss(scores.clamp_min(1e-12).log(), labels))
    return EvalResult(1 - correct[1] / n, 1 - correct[5] / n, loss, n)
