"""Faster R-CNN detectors with the paper's backbones (Tables 7-8, Appendix A).

Built on torchvision's detection engine (`FasterRCNN`: its image transform, RPN with anchor
sampling and losses, `MultiScaleRoIAlign`, RoI heads with their sampler and losses); only
the backbone and the per-region head are reslab's. Three designs:

- `c4`, the paper's (Appendix A; Detectron's "C4"): conv1..conv4_x of a Table-1 net are
  the shared feature map (stride 16) and the RPN works on it; each proposal is pooled by
  a 14x14 RoIAlign before conv5_1, then conv5_x (with its stride 2, so 7x7 after conv5_1)
  and global average pooling are the per-region head (`Res5Head`), and torchvision's
  `FastRCNNPredictor` is the two sibling layers (class scores, per-class boxes). We pool
  14x14 and keep conv5_1's stride (as MSRA's original and detectron2's Res5ROIHeads)
  rather than pool 7x7 and drop the stride: conv5_x then runs exactly as in the
  ImageNet net (same weights, same strides, same 7x7 output), so pre-trained weights
  keep their meaning.
- `fpn`: C2..C5 with a feature pyramid, as torchvision's `fasterrcnn_resnet50_fpn`
  (anchors 32..512, one size per level; 7x7 RoIAlign; two-fc head).
- `vgg16`, the baseline row of Tables 7-8 (Faster R-CNN's own design): torchvision's
  VGG-16 conv layers up to conv5_3 without the last max-pool (stride 16), 7x7 RoI
  pooling, fc6 and fc7 as the per-region head.

Every detector carries `model.reslab_spec`, a `DetectorSpec` whose `to_dict()` is stored
in checkpoints; `detector_from_spec` rebuilds the same modules (without the backbone's
pre-trained weights, which the checkpoint's state_dict replaces).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from reslab.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from reslab.errors import ReslabError
from reslab.interop import CHECKPOINT_FORMAT, load_weights, read_file, read_state_dict
from reslab.models.backbone import fpn_backbone, freeze_bn, freeze_layers
from reslab.models.imagenet import IMAGENET_CONFIGS
from reslab.models.registry import MAX_NUM_CLASSES, build, resolve
from reslab.models.weights import get_weights, is_weights_name

HEADS = ("c4", "fpn")
VGG = "vgg16"
#: The backbones: every ImageNet net of Table 1, their plain twins, and VGG-16.
BACKBONES = tuple(f"{kind}{d}" for kind in ("resnet", "plain") for d in IMAGENET_CONFIGS) + (VGG,)

#: Anchors of each design and the image scale (shorter side) they are meant for: the
#: paper's 3 scales (Faster R-CNN on 600-pixel images) and torchvision's FPN anchors (one
#: size per pyramid level, for 800-pixel images). At another `min_size` they scale with it.
PAPER_ANCHORS = (128, 256, 512)
FPN_ANCHORS = (32, 64, 128, 256, 512)
ANCHOR_REFERENCE = {"c4": (PAPER_ANCHORS, 600), "fpn": (FPN_ANCHORS, 800)}
PAPER_ASPECT_RATIOS = (0.5, 1.0, 2.0)

#: The RPN and RoI settings of Faster R-CNN (Ren et al. 2015) that Appendix A keeps: 256
#: anchors sampled per image (up to 1:1 positive:negative), proposals NMS at IoU 0.7,
#: 2000 proposals for training and 300 at test (pre-NMS: py-faster-rcnn's 12000 / 6000);
#: 128 RoIs per image, 25% foreground (IoU >= 0.5). torchvision's names.
PAPER_OPTIONS: dict[str, Any] = {
    "rpn_batch_size_per_image": 256, "rpn_positive_fraction": 0.5, "rpn_nms_thresh": 0.7,
    "rpn_pre_nms_top_n_train": 12000, "rpn_post_nms_top_n_train": 2000,
    "rpn_pre_nms_top_n_test": 6000, "rpn_post_nms_top_n_test": 300,
    "box_batch_size_per_image": 128, "box_positive_fraction": 0.25,
    "box_fg_iou_thresh": 0.5, "box_bg_iou_thresh": 0.5,
}
#: Test-time per-class NMS of the detections (IoU): py-faster-rcnn's cfg.TEST.NMS, the
#: Faster R-CNN setting Appendix A keeps, which `create_detector` records in the spec;
#: a spec without one (made before it was recorded) keeps torchvision's 0.5, which its
#: detector was trained and evaluated with.
PAPER_TEST_NMS = 0.3
LEGACY_TEST_NMS = 0.5
#: The FPN head keeps torchvision's per-level pre-NMS counts (fasterrcnn_resnet50_fpn).
FPN_PRE_NMS = {"rpn_pre_nms_top_n_train": 2000, "rpn_pre_nms_top_n_test": 1000}
#: FasterRCNN keyword options a spec may carry (numbers only, so specs stay plain JSON).
OPTION_NAMES = (*PAPER_OPTIONS, "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_score_thresh",
                "box_score_thresh", "box_nms_thresh", "box_detections_per_img")


@dataclass(frozen=True)
class DetectorSpec:
    """What a detector is made of; stored in checkpoints as `to_dict()` (with
    `"task": "detection"`, which tells a detector's checkpoint from a classifier's)."""

    backbone: str  # resnet18..152, plain18..152 or vgg16
    head: str  # "c4" or "fpn" (vgg16: "c4", its stride-16 single-level design)
    num_classes: int  # with the background class 0
    shortcut: str | None
    stride_in_1x1: bool
    frozen_bn: bool  # FrozenBatchNorm2d (with pre-trained weights) or trainable BN
    trainable_layers: int
    min_size: int
    max_size: int
    anchor_sizes: tuple[int, ...]
    aspect_ratios: tuple[float, ...]
    image_mean: tuple[float, float, float]  # [0, 1] units, as FasterRCNN's transform
    image_std: tuple[float, float, float]
    options: dict[str, float] = field(default_factory=dict)  # FasterRCNN keyword options

    @property
    def name(self) -> str:
        return f"fasterrcnn_{self.head}_{self.backbone}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(task="detection", name=self.name, anchor_sizes=list(self.anchor_sizes),
                 aspect_ratios=list(self.aspect_ratios), image_mean=list(self.image_mean),
                 image_std=list(self.image_std))
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "the checkpoint") -> DetectorSpec:
        """The spec a `to_dict()` read back from a file describes, checked before anything
        is built; ReslabError naming `where` otherwise."""
        if not isinstance(d, Mapping) or d.get("task") != "detection":
            raise ReslabError(f"{where} does not describe a detector")
        try:
            spec = cls(
                backbone=str(d["backbone"]), head=str(d["head"]),
                num_classes=int(d["num_classes"]),
                shortcut=None if d.get("shortcut") is None else str(d["shortcut"]),
                stride_in_1x1=bool(d["stride_in_1x1"]), frozen_bn=bool(d["frozen_bn"]),
                trainable_layers=int(d["trainable_layers"]), min_size=int(d["min_size"]),
                max_size=int(d["max_size"]),
                anchor_sizes=tuple(int(a) for a in d["anchor_sizes"]),
                aspect_ratios=tuple(float(a) for a in d["aspect_ratios"]),
                image_mean=tuple(float(a) for a in d["image_mean"]),
                image_std=tuple(float(a) for a in d["image_std"]),
                options={str(k): v for k, v in dict(d.get("options") or {}).items()})
        except (KeyError, TypeError, ValueError) as e:
            raise ReslabError(f"{where} has an invalid detector spec ({type(e).__name__}: "
                              f"{e})") from None
        check_spec(spec, where)
        return spec


def check_spec(spec: DetectorSpec, where: str = "the detector") -> None:
    """ReslabError naming the first value no detector can have."""
    checks = [
        (spec.backbone in BACKBONES, f"unknown detection backbone {spec.backbone!r}: one of "
                                     f"{', '.join(BACKBONES)}"),
        (spec.head in HEADS, f"--head must be c4 or fpn, got {spec.head!r}"),
        (not (spec.backbone == VGG and spec.head == "fpn"),
         "vgg16 is the paper's single-level baseline: use --head c4 with it"),
        (2 <= spec.num_classes <= MAX_NUM_CLASSES,
         f"num_classes (with background) must be in 2..{MAX_NUM_CLASSES:,}, got "
         f"{spec.num_classes}"),
        (0 <= spec.trainable_layers <= 5,
         f"--trainable-layers must be in 0..5, got {spec.trainable_layers}"),
        (32 <= spec.min_size <= 4096, f"--min-size must be in 32..4096, got {spec.min_size}"),
        (spec.min_size <= spec.max_size <= 8192,
         f"--max-size must be in [--min-size {spec.min_size}, 8192], got {spec.max_size}"),
        (len(spec.anchor_sizes) >= 1 and all(a >= 1 for a in spec.anchor_sizes),
         f"anchor sizes must be positive pixel sizes, got {list(spec.anchor_sizes)}"),
        (spec.head != "fpn" or len(spec.anchor_sizes) == len(FPN_ANCHORS),
         f"the fpn head takes one anchor size per level ({len(FPN_ANCHORS)}), got "
         f"{list(spec.anchor_sizes)}"),
        (len(spec.aspect_ratios) >= 1 and all(math.isfinite(r) and r > 0
                                              for r in spec.aspect_ratios),
         f"aspect ratios must be positive, got {list(spec.aspect_ratios)}"),
        (len(spec.image_mean) == 3 and len(spec.image_std) == 3
         and all(s > 0 for s in spec.image_std), "image mean and std need 3 channels, std > 0"),
        (set(spec.options) <= set(OPTION_NAMES) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in spec.options.values()),
         f"unknown or non-numeric detector options: {sorted(spec.options)}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ReslabError(f"{msg}" if where == "the detector" else f"{where}: {msg}")


def default_anchor_sizes(head: str, min_size: int) -> tuple[int, ...]:
    """The design's anchors scaled to images of shorter side `min_size`: the paper's
    (128, 256, 512) at 600 pixels (c4, vgg16), torchvision's 32..512 at 800 (fpn)."""
    sizes, reference = ANCHOR_REFERENCE["fpn" if head == "fpn" else "c4"]
    return tuple(max(1, round(a * min_size / reference)) for a in sizes)


class Res5Head(nn.Module):
    """The c4 per-region head (Appendix A): conv5_x of the net, then global average
    pooling; 14x14 pooled regions -> 7x7 after conv5_1's stride -> one vector each."""

    def __init__(self, layer4: nn.Sequential, out_channels: int) -> None:
        super().__init__()
        self.layer4 = layer4
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.layer4(x), 1), 1)


class RPNHeadFP32(RPNHead):
    """torchvision's RPNHead (same parameters) whose outputs are fp32 under bf16 autocast,
    so that anchors are decoded into proposals in fp32: bf16's 8-bit mantissa would move
    box corners in steps of 2-4 pixels on 600-pixel images."""

    def forward(self, x: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for feature in x:
            t = self.conv(feature)
            logits.append(self.cls_logits(t).float())
            deltas.append(self.bbox_pred(t).float())
        return logits, deltas


class FastRCNNPredictorFP32(FastRCNNPredictor):
    """torchvision's two sibling layers (class scores, per-class box deltas; same
    parameters) with fp32 outputs under bf16 autocast: the detector's losses and its
    final boxes are computed in fp32."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x).float(), self.bbox_pred(x).float()


def _c4_parts(net: nn.Module) -> tuple[nn.Sequential, Res5Head]:
    """(conv1..conv4_x as one stride-16 module, conv5_x + pooling) of a Table-1 net."""
    body = nn.Sequential(OrderedDict(
        (name, getattr(net, name))
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")))
    last = net.layer3[-1]
    body.out_channels = (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels
    return body, Res5Head(net.layer4, net.num_features)


def _vgg_parts(net: nn.Module, trainable_layers: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(conv1_1..conv5_3 without the last max-pool, stride 16; fc6 + fc7) of torchvision's
    VGG-16. The top `trainable_layers` of its five conv blocks stay trainable (Faster
    R-CNN fine-tunes from conv3_1: 3)."""
    features = net.features[:-1]
    pools = [i for i, m in enumerate(net.features) if isinstance(m, nn.MaxPool2d)]
    first_trainable = 0 if trainable_layers >= 5 else pools[4 - trainable_layers] + 1
    for i, module in enumerate(features):
        if i < first_trainable:
            module.requires_grad_(False)
    features.out_channels = 512
    head = nn.Sequential(nn.Flatten(), *list(net.classifier)[:-1])  # fc6, fc7 (ReLU, dropout)
    return features, head


def _classifier_rows(state: Mapping[str, torch.Tensor], key: str) -> int | None:
    w = state.get(key)
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() == 2 else None


@dataclass
class _Pretrained:
    """A weights file read once: its state_dict and what a reslab checkpoint says of it."""

    state: dict[str, torch.Tensor]
    spec: dict[str, Any] | None  # a reslab checkpoint's model_spec
    mean: tuple[float, ...] | None  # a reslab checkpoint's per-channel mean ([0, 1] units)
    std: tuple[float, ...] | None


def _read_pretrained(weights: str | os.PathLike | Mapping[str, Any]) -> _Pretrained:
    """The backbone's starting weights: a file `read_file` reads, a registry entry
    `NAME:MODEL` of reslab's own ImageNet-recipe classifiers (e.g. imagenette:resnet18,
    sha256-checked), or a state_dict / checkpoint dict. A detector's checkpoint and a
    CIFAR-recipe classifier (32-pixel images, Sec. 4.2) are refused."""
    obj = read_file(weights) if isinstance(weights, str | os.PathLike) else dict(weights)
    spec = mean = std = None
    if obj.get("format") == CHECKPOINT_FORMAT:
        spec = obj.get("model_spec") if isinstance(obj.get("model_spec"), Mapping) else None
        if spec is not None and spec.get("task") == "detection":
            raise ReslabError(f"{weights} is a detector checkpoint; --weights of `reslab "
                              "detect train` are an ImageNet classifier's (or resume the "
                              "detector's run with --resume)")
        config = obj.get("config") if isinstance(obj.get("config"), Mapping) else {}
        if (spec or {}).get("family") == "cifar" or config.get("recipe") == "cifar":
            raise ReslabError(f"{weights} is a classifier trained with the CIFAR recipe "
                              "(32-pixel images, Sec. 4.2); a detector's backbone starts "
                              "from ImageNet-recipe weights (Appendix A): give an ImageNet "
                              "classifier's checkpoint or registry entry (`reslab weights`)")
        pre = obj.get("preprocess") or {}
        if isinstance(pre.get("mean"), torch.Tensor):
            mean = tuple(pre["mean"].float().reshape(3, -1).mean(1).tolist())
            s = pre.get("std")
            std = (1.0, 1.0, 1.0) if s is None else tuple(s.float().reshape(3, -1).mean(1).tolist())
    return _Pretrained(read_state_dict(obj), dict(spec) if spec else None, mean, std)


def weights_origin(weights: str | os.PathLike | None) -> dict[str, Any] | None:
    """What a run.json records of the backbone's `--weights`: for a registry entry
    (`NAME:MODEL` that names no file), its key, file sha256, data, recipe and recorded
    test error; for a file, its path; None from scratch."""
    if weights is None:
        return None
    if isinstance(weights, str) and is_weights_name(weights) and not os.path.exists(weights):
        try:
            e = get_weights(weights)
        except ReslabError:  # gone from the registry since (a resumed run needs it not)
            return {"entry": weights, "in_registry": False}
        return {"entry": e.key, "sha256": e.sha256, "data": e.data.get("source"),
                "recipe": e.recipe.get("recipe"), "iterations": e.iterations_done,
                "test_error": e.test_error}
    return {"file": os.path.abspath(os.fspath(weights))}


def _resnet(spec: DetectorSpec, pretrained: _Pretrained | None) -> nn.Module:
    """The Table-1 classifier the backbone comes from, with the pre-trained weights."""
    rows = _classifier_rows(pretrained.state, "fc.weight") if pretrained else None
    net = build(resolve(spec.backbone, rows, spec.shortcut, spec.stride_in_1x1))
    if pretrained is not None:
        load_weights(net, pretrained.state)
    return net


def _vgg(pretrained: _Pretrained | None) -> nn.Module:
    rows = _classifier_rows(pretrained.state, "classifier.6.weight") if pretrained else None
    net = torchvision.models.vgg16(weights=None, num_classes=rows or 1000)
    if pretrained is not None:
        load_weights(net, pretrained.state)
    return net


def build_detector(spec: DetectorSpec, pretrained: _Pretrained | None = None) -> FasterRCNN:
    """The torchvision FasterRCNN `spec` describes (backbone weights from `pretrained`)."""
    check_spec(spec)
    ratios = tuple(spec.aspect_ratios)
    options = dict(PAPER_OPTIONS, **(FPN_PRE_NMS if spec.head == "fpn" else {}),
                   box_nms_thresh=LEGACY_TEST_NMS)
    options.update(spec.options)
    common = dict(min_size=spec.min_size, max_size=spec.max_size,
                  image_mean=list(spec.image_mean), image_std=list(spec.image_std), **options)
    single = AnchorGenerator((spec.anchor_sizes,), (ratios,))
    if spec.backbone == VGG:
        body, head = _vgg_parts(_vgg(pretrained), spec.trainable_layers)
        pool, width, anchors = MultiScaleRoIAlign(["0"], 7, 2), 4096, single
    else:
        net = _resnet(spec, pretrained)
        if spec.frozen_bn:
            freeze_bn(net)
        freeze_layers(net, spec.trainable_layers)
        if spec.head == "fpn":  # torchvision's fasterrcnn_resnet50_fpn design
            body = fpn_backbone(net)
            pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
            head = TwoMLPHead(body.out_channels * 7 * 7, 1024)
            width = 1024
            anchors = AnchorGenerator(tuple((a,) for a in spec.anchor_sizes),
                                      (ratios,) * len(spec.anchor_sizes))
        else:  # the paper's: 14x14 RoIAlign before conv5_1, conv5_x + pooling per region
            body, head = _c4_parts(net)
            pool, width, anchors = MultiScaleRoIAlign(["0"], 14, 0), head.out_channels, single
    model = FasterRCNN(
        body, rpn_anchor_generator=anchors,
        rpn_head=RPNHeadFP32(body.out_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=pool, box_head=head,
        box_predictor=FastRCNNPredictorFP32(width, spec.num_classes), **common)
    model.reslab_spec = spec
    return model


def create_detector(
    backbone: str,
    head: str = "c4",
    num_classes: int = 21,
    weights: str | os.PathLike | Mapping[str, Any] | None = None,
    trainable_layers: int | None = None,
    min_size: int = 600,
    max_size: int = 1000,
    *,
    anchor_sizes: Sequence[int] | None = None,
    aspect_ratios: Sequence[float] = PAPER_ASPECT_RATIOS,
    shortcut: str | None = None,
    stride_in_1x1: bool | None = None,
    frozen_bn: bool | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    **options: float,
) -> FasterRCNN:
    """A Faster R-CNN (torchvision's) with a backbone of the paper (Tables 7-8).

    Args:
        backbone: resnet18..152 / plain18..152 (Table 1) or vgg16 (the baseline row).
        head: "c4" (the paper's, Appendix A) or "fpn" (torchvision's FPN design).
        num_classes: object classes + 1 for the background (PASCAL VOC: 21, COCO: 81).
        weights: the backbone's pre-trained classifier weights: a reslab ImageNet-recipe
            checkpoint (its net, shortcut, stride placement and mean are used) or any file
            `reslab.load_weights` reads (torchvision/timm/safetensors; for torchvision's
            bottleneck nets pass `stride_in_1x1=False`). None: from scratch.
        trainable_layers: stages kept trainable from the top (layer4..conv1; VGG-16: conv
            blocks 5..1), 0..5; default 3 with weights (as torchvision and Faster R-CNN,
            which fine-tune from conv3_x), 5 (all) from scratch.
        min_size, max_size: images are resized to shorter side `min_size` (longer side at
            most `max_size`); the paper: 600 and 1000.
        anchor_sizes: default the design's anchors scaled by min_size (the paper's
            128/256/512 at 600; `default_anchor_sizes`), so small CPU images get small
            anchors. aspect_ratios: the paper's 0.5, 1, 2.
        frozen_bn: default True with weights (Appendix A: BN statistics fixed after
            ImageNet training, `FrozenBatchNorm2d`), False from scratch (trainable BN).
        image_mean, image_std: per channel in [0, 1] units; default a reslab checkpoint's
            own mean (std 1, the paper's mean subtraction), else torchvision's ImageNet ones.
        options: FasterRCNN keyword options (`OPTION_NAMES`) over `PAPER_OPTIONS`;
            `box_nms_thresh` (test-time NMS) defaults to the paper's 0.3 (`PAPER_TEST_NMS`).
    """
    if not isinstance(backbone, str) or backbone.strip().lower() not in BACKBONES:
        raise ReslabError(f"unknown detection backbone {backbone!r}: one of "
                          f"{', '.join(BACKBONES)}")
    backbone = backbone.strip().lower()
    pretrained = _read_pretrained(weights) if weights is not None else None
    if backbone != VGG:
        ck = pretrained.spec if pretrained is not None else None
        if ck is not None:
            ck_name = str(ck.get("name"))
            if ck_name != backbone and ck_name not in BACKBONES:
                raise ReslabError(f"{weights} holds a {ck_name}, which is no detection "
                                  "backbone (a CIFAR network?): --weights takes ImageNet "
                                  f"classifier weights of one of {', '.join(BACKBONES)}")
            if ck_name != backbone:
                raise ReslabError(f"{weights} holds a {ck_name}, not a {backbone}: use "
                                  f"--backbone {ck_name} or other --weights")
            shortcut = shortcut or ck.get("shortcut")
            if stride_in_1x1 is None:
                stride_in_1x1 = ck.get("stride_in_1x1")
        resolved = resolve(backbone, shortcut=shortcut, stride_in_1x1=stride_in_1x1)
        shortcut, stride_in_1x1 = resolved.shortcut, resolved.stride_in_1x1
    else:
        shortcut, stride_in_1x1 = None, True
    if frozen_bn is None:
        frozen_bn = pretrained is not None
    if trainable_layers is None:
        trainable_layers = 3 if pretrained is not None else 5
    if image_mean is None and pretrained is not None and pretrained.mean is not None:
        image_mean, image_std = pretrained.mean, image_std or pretrained.std
    spec = DetectorSpec(
        backbone=backbone, head=head, num_classes=num_classes, shortcut=shortcut,
        stride_in_1x1=bool(stride_in_1x1), frozen_bn=bool(frozen_bn) and backbone != VGG,
        trainable_layers=trainable_layers, min_size=min_size, max_size=max_size,
        anchor_sizes=tuple(anchor_sizes or default_anchor_sizes(head, min_size)),
        aspect_ratios=tuple(float(r) for r in aspect_ratios),
        image_mean=tuple(float(m) for m in (image_mean or IMAGENET_MEAN)),
        image_std=tuple(float(s) for s in (image_std or IMAGENET_STD)),
        options={"box_nms_thresh": PAPER_TEST_NMS, **options})
    return build_detector(spec, pretrained)


def detector_from_spec(d: Mapping[str, Any], where: str = "the checkpoint") -> FasterRCNN:
    """The detector a checkpoint's `model_spec` describes, with fresh weights (load the
    checkpoint's state_dict into it)."""
    return build_detector(DetectorSpec.from_dict(d, where))


def is_detector_spec(d: Any) -> bool:
    """Whether a checkpoint's model_spec is a detector's (else a classifier's)."""
    return isinstance(d, Mapping) and d.get("task") == "detection"
