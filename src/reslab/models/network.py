"""The network skeleton shared by the ImageNet (Table 1) and CIFAR (Sec. 4.2) families.

stem -> stages `layer1..layerK` of blocks -> global average pool -> `fc`. Fully
convolutional up to the pool, so any input size the stem and strides can take works.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from reslab.errors import ReslabError
from reslab.kernels.fused_bn import batch_norm_act
from reslab.models.blocks import BasicBlock, Bottleneck, init_he, memory_format_of


class _MeanGrad(torch.autograd.Function):
    """The backward of a global average pool, y = mean of x over H, W, that writes dL/dx
    in `x`'s memory format. Autograd's (mean's) returns an NCHW gradient, which in a
    channels_last network sends the last ReLU's backward down PyTorch's slow
    mixed-layout path. Same values, bit for bit (tests/test_models.py)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape, ctx.fmt = x.shape, memory_format_of(x)
        return torch.nn.functional.adaptive_avg_pool2d(x, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        n, c, h, w = ctx.shape
        gx = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.fmt)
        return gx.copy_((grad / (h * w)).expand(n, c, h, w))


class GlobalAvgPool(nn.AdaptiveAvgPool2d):
    """nn.AdaptiveAvgPool2d(1), as torchvision's `avgpool`, whose training backward keeps
    the input's memory format (`_MeanGrad`)."""

    def __init__(self) -> None:
        super().__init__(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return _MeanGrad.apply(x)
        return super().forward(x)


class ResNet(nn.Module):
    """A residual (or, with `shortcut=None`, plain) network.

    Args:
        block: BasicBlock or Bottleneck.
        layers: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-34.
        widths: `planes` of each stage, e.g. (64, 128, 256, 512).
        stem: "imagenet" (7x7/2 conv, 3x3/2 max pool) or "cifar" (3x3 conv).
        shortcut: "A", "B", "C", or None for the plain twin.
        stride_in_1x1: bottleneck stride placement (see `Bottleneck`).
    """

    #: Training runs `_forward_fused` (reslab.kernels.set_kernels; eval the eager ops).
    fused_bn = False

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        widths: tuple[int, ...],
        stem: str,
        num_classes: int,
        shortcut: str | None,
        stride_in_1x1: bool = True,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        # Children are registered in forward order (conv1, bn1, relu, maxpool, layer1..,
        # avgpool, fc) as in torchvision, so torchvision's IntermediateLayerGetter (used by
        # the detection backbone, reslab.models.backbone) runs them correctly.
        stem_width = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, stem_width, 3, stride=1, padding=1, bias=False)
        else:
            raise ValueError(f"unknown stem {stem!r}")
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = (
            nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        )
        channels = stem_width
        self.stage_names: list[str] = []
        for i, (blocks, planes) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(blocks):
                stage.append(
                    block(channels, planes, stride if j == 0 else 1, shortcut, stride_in_1x1)
                )
                channels = planes * block.expansion
            name = f"layer{i + 1}"
            setattr(self, name, nn.Sequential(*stage))
            self.stage_names.append(name)
        self.num_features = channels
        self.avgpool = GlobalAvgPool()
        self.fc = nn.Linear(channels, num_classes)
        init_he(self)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ReslabError(
                f"expected a batch of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_features(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Every stage's output, keyed `layer1..layerK` (ImageNet nets: C2..C5, Sec. 4.3)."""
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        x = self.forward_stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_bn and self.training:
            return self._forward_fused(x)
        x = self.forward_stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` in training with the fused kernels (reslab.kernels.fused_bn): the
        stem's bn1 + ReLU in one pass, and each block handing the next its output together
        with that output's bf16 copy, made in the same pass (the cast autocast would make
        at the next conv1: docs/cpu-profile.md)."""
        self._check_input(x)
        x = self.maxpool(batch_norm_act(self.bn1, self.conv1(x))[0])
        blocks = [b for name in self.stage_names for b in getattr(self, name)]
        low = None
        for i, block in enumerate(blocks):
            x, low = block.forward_fused(x, low, want_low=i + 1 < len(blocks))
        return self.fc(torch.flatten(self.avgpool(x), 1))
