"""ImageNet networks as detection backbones (Sec. 4.3, Tables 7-8, Appendix A).

The paper replaces VGG-16 by ResNet-101 in Faster R-CNN. `create_backbone` returns the
C2..C5 feature maps (outputs of conv2_x..conv5_x, strides 4, 8, 16, 32) of any ImageNet
net of Table 1 in the form torchvision's `FasterRCNN` takes: a module returning an
OrderedDict of feature maps with an `out_channels` attribute. As in the paper's
Appendix A, BN layers are frozen (statistics and affine parameters fixed,
`FrozenBatchNorm2d`) and the stem and early stages can be frozen too.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from reslab.errors import ReslabError
from reslab.interop import load_weights
from reslab.models.registry import build, resolve

_TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


class C5Backbone(nn.Module):
    """C5 only (conv5_x output, stride 32), for a single-level head; `out_channels` set.

    FasterRCNN then needs a one-level anchor generator and RoI pooler, e.g.
    `AnchorGenerator(((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),))` and
    `MultiScaleRoIAlign(["0"], 7, 2)`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(model, return_layers={"layer4": "0"})
        self.out_channels = model.num_features

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.body(x)


def freeze_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d with the same statistics and affine
    parameters, in place (Appendix A: BN is a fixed affine map when fine-tuning)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for t in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, t).copy_(getattr(child, t).detach())
            setattr(module, name, frozen)
        else:
            freeze_bn(child)
    return module


def freeze_layers(model: nn.Module, trainable_layers: int) -> nn.Module:
    """Keep only the top `trainable_layers` of layer4, layer3, layer2, layer1, conv1 (with
    bn1) trainable, as torchvision's `resnet_fpn_backbone`; in place."""
    if not 0 <= trainable_layers <= 5:
        raise ReslabError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    trainable = _TRAINABLE_ORDER[:trainable_layers]
    if trainable_layers == 5:
        trainable = (*trainable, "bn1")
    for pname, p in model.named_parameters():
        if not pname.startswith(trainable):
            p.requires_grad_(False)
    return model


def _stage_channels(model: nn.Module, k: int) -> int:
    last = getattr(model, f"layer{k}")[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


def create_backbone(
    name: str,
    *,
    fpn: bool = True,
    trainable_layers: int = 3,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    weights: str | os.PathLike | Mapping[str, Any] | None = None,
    shortcut: str | None = None,
    stride_in_1x1: bool | None = None,
    frozen_bn: bool = True,
    fpn_channels: int = 256,
) -> nn.Module:
    """A Faster R-CNN backbone from an ImageNet net of Table 1 (any depth, A/B/C, plain).

    Args:
        name: e.g. "resnet101" (the paper's), "resnet18", "plain34".
        fpn: True: torchvision's `BackboneWithFPN` over the `returned_layers` (1..4 =
            C2..C5, stride 4..32), `fpn_channels` each plus a max-pooled level.
            False: C5 only (`C5Backbone`), `out_channels` = 512 or 2048.
        trainable_layers: how many of layer4, layer3, layer2, layer1, conv1 (from the
            top) stay trainable, 0..5, as torchvision's `resnet_fpn_backbone`.
        weights: classifier weights to start from (anything `load_weights` reads).
        shortcut, stride_in_1x1: as for `create_model`.
        frozen_bn: replace BN by FrozenBatchNorm2d (Appendix A: BN layers are fixed).
    """
    spec = resolve(name, shortcut=shortcut, stride_in_1x1=stride_in_1x1)
    if spec.family != "imagenet":
        raise ReslabError(
            f"{spec.name} is a CIFAR net (Sec. 4.2); detection backbones are the ImageNet "
            "nets of Table 1: resnet18, 34, 50, 101, 152 or their plain twins"
        )
    if not 0 <= trainable_layers <= 5:
        raise ReslabError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    returned = list(returned_layers)
    if not returned or any(k not in (1, 2, 3, 4) for k in returned):
        raise ReslabError(f"returned_layers must be a non-empty subset of 1..4, got {returned}")
    model = build(spec)
    if weights is not None:
        load_weights(model, weights)
    if frozen_bn:
        freeze_bn(model)
    freeze_layers(model, trainable_layers)
    if not fpn:
        return C5Backbone(model)
    return fpn_backbone(model, returned, fpn_channels)


def fpn_backbone(model: nn.Module, returned_layers: Sequence[int] = (1, 2, 3, 4),
                 fpn_channels: int = 256) -> BackboneWithFPN:
    """torchvision's `BackboneWithFPN` over the stages `returned_layers` (1..4 = C2..C5)
    of a built ImageNet net, plus a max-pooled level (fasterrcnn_resnet50_fpn's)."""
    returned = list(returned_layers)
    stage_channels = [_stage_channels(model, k) for k in returned]
    return BackboneWithFPN(
        model,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(returned)},
        in_channels_list=stage_channels,
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
