"""Residual and plain building blocks and the shortcut options A/B/C (paper Sec. 3.3, Fig. 2, 5).

Parameter names follow torchvision (`conv1`, `bn1`, ..., `downsample.0/1`) so that
ecosystem checkpoints load without conversion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reslab.kernels.fused_bn import batch_norm_act

SHORTCUT_OPTIONS = ("A", "B", "C")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (BN follows every conv, Sec. 3.4)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: identity with the extra channels zero-padded, spatial subsampling by stride.

    Parameter-free (Sec. 3.3). Subsampling takes every `stride`-th pixel; the input
    channels come first and the new channels are zeros appended after them, as in the
    authors' lab's Torch code (fb.resnet.torch `shortcut`, type 'A').
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("option A cannot reduce channels")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():  # the backward that keeps the layout
            return _SubsampleZeroPad.apply(x, self.stride, self.out_channels)
        return zero_pad_shortcut(x, self.out_channels, self.stride)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def zero_pad_shortcut(x: torch.Tensor, out_channels: int, stride: int) -> torch.Tensor:
    """Option A with plain ops, `x[:, :, ::s, ::s]` zero-padded to `out_channels`: what
    `ZeroPadShortcut` computes outside training (eval, export), and how autograd would
    differentiate it (NCHW gradients; `_SubsampleZeroPad`)."""
    if stride != 1:
        x = x[:, :, ::stride, ::stride]
    extra = out_channels - x.shape[1]
    if extra:
        x = F.pad(x, (0, 0, 0, 0, 0, extra))
    return x


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last if `x` is laid out so (and not also plain contiguous), else
    contiguous_format: the layout a hand-written backward gives its gradient."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


class _SubsampleZeroPad(torch.autograd.Function):
    """Option A's data movement in training, y[:, :C] = x[:, :, ::s, ::s], y[:, C:] = 0,
    written by hand for its backward: autograd's own (`slice_backward` behind the strided
    slice) returns an NCHW gradient whatever `x`'s layout, so in a channels_last network
    the gradient sum and the ReLU backward at each downsampling block take PyTorch's slow
    mixed-layout path (7% of a bf16 ResNet-20 step on an AMX CPU, docs/cpu-profile.md).
    Here both directions keep `x`'s memory format; the values are the same, bit for bit
    (tests/test_models.py)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, stride: int, out_channels: int) -> torch.Tensor:
        fmt = memory_format_of(x)
        ctx.in_shape, ctx.stride, ctx.fmt = x.shape, stride, fmt
        sub = x[:, :, ::stride, ::stride]
        y = torch.empty((x.shape[0], out_channels, *sub.shape[2:]), dtype=x.dtype,
                        device=x.device, memory_format=fmt)
        y[:, : x.shape[1]] = sub
        y[:, x.shape[1]:] = 0
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        n, c, h, w = ctx.in_shape
        s = ctx.stride
        gx = torch.empty((n, c, h, w), dtype=grad.dtype, device=grad.device,
                         memory_format=ctx.fmt).zero_()
        gx[:, :, ::s, ::s] = grad[:, :c]
        return gx, None, None


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Options B/C: 1x1 projection conv followed by BN (Eqn. 2)."""
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


def make_shortcut(
    option: str | None, in_channels: int, out_channels: int, stride: int
) -> nn.Module | None:
    """The shortcut of one block, as fb.resnet.torch's `shortcut(nIn, nOut, stride)`.

    Returns None for a plain block (option None), nn.Identity where dimensions match
    (A and B), a ZeroPadShortcut (A) or a projection (B where dimensions change; C always).
    """
    if option is None:
        return None
    if option not in SHORTCUT_OPTIONS:
        raise ValueError(f"shortcut option must be one of {SHORTCUT_OPTIONS}, got {option!r}")
    same = in_channels == out_channels and stride == 1
    if option == "C" or (option == "B" and not same):
        return projection_shortcut(in_channels, out_channels, stride)
    if same:
        return nn.Identity()
    return ZeroPadShortcut(in_channels, out_channels, stride)


class BasicBlock(nn.Module):
    """Two 3x3 convs (Fig. 5 left): y = ReLU(F(x) + shortcut(x)); plain when shortcut is None.

    Submodules: `conv1, bn1, conv2, bn2` and, for projections, `downsample` (torchvision's
    name); a parameter-free shortcut is `shortcut`.
    """

    expansion = 1
    #: Training runs `forward_fused` (reslab.kernels.set_kernels; eval the eager ops).
    fused_bn = False

    def __init__(
        self, in_channels: int, planes: int, stride: int = 1, shortcut: str | None = "A",
        stride_in_1x1: bool = True,
    ) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        _attach_shortcut(self, make_shortcut(shortcut, in_channels, out_channels, stride))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """F(x): the block's output before the addition (after the last BN)."""
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_bn and self.training:
            return self.forward_fused(x)[0]
        return _combine(self, x, self.residual(x))

    def forward_fused(self, x: torch.Tensor, x_low: torch.Tensor | None = None,
                      want_low: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`forward` in training with the fused kernels: (y, y's bf16 copy or None).
        `x_low`, the previous block's bf16 copy of `x`, feeds conv1 (autocast's cast of
        `x`, made in the previous block's pass); the shortcut takes `x` itself."""
        out, _ = batch_norm_act(self.bn1, self.conv1(x if x_low is None else x_low))
        return _combine_fused(self, x, self.conv2(out), self.bn2, want_low)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 restore (x4) (Fig. 5 right), for ResNet-50/101/152.

    `stride_in_1x1=True` puts the stride-2 on the first 1x1 conv as the paper and the
    original Caffe models (3.8 GFLOPs for ResNet-50); False puts it on the 3x3 conv as
    torchvision ("v1.5", 4.1 GFLOPs). Parameters are identical either way.
    """

    expansion = 4
    fused_bn = False  # as BasicBlock's

    def __init__(
        self, in_channels: int, planes: int, stride: int = 1, shortcut: str | None = "B",
        stride_in_1x1: bool = True,
    ) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        _attach_shortcut(self, make_shortcut(shortcut, in_channels, out_channels, stride))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """F(x): the block's output before the addition (after the last BN)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_bn and self.training:
            return self.forward_fused(x)[0]
        return _combine(self, x, self.residual(x))

    def forward_fused(self, x: torch.Tensor, x_low: torch.Tensor | None = None,
                      want_low: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As BasicBlock's."""
        out, _ = batch_norm_act(self.bn1, self.conv1(x if x_low is None else x_low))
        out, _ = batch_norm_act(self.bn2, self.conv2(out))
        return _combine_fused(self, x, self.conv3(out), self.bn3, want_low)


def _attach_shortcut(block: nn.Module, shortcut: nn.Module | None) -> None:
    # Projections are called `downsample` (torchvision's key names); parameter-free
    # shortcuts `shortcut`; a plain block has neither.
    block.downsample = shortcut if isinstance(shortcut, nn.Sequential) else None
    block.shortcut = None if isinstance(shortcut, nn.Sequential) else shortcut
    block.plain = shortcut is None


def shortcut_of(block: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The block's shortcut branch applied to `x` (projection or option A), None if plain."""
    if block.downsample is not None:
        return block.downsample(x)
    if block.shortcut is not None:
        return block.shortcut(x)
    return None


def _combine(block: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """y = ReLU(F(x) + shortcut(x)) (Eqn. 1), or ReLU(F(x)) for a plain block.

    Under bf16/fp16 autocast the addition is done in fp32, so the residual stream that
    runs through the whole net stays fp32 (the next convolution casts its input down as
    usual): with the sum rounded to bf16, ResNet-56 collapsed to chance on CPU while the
    fp32 run learned (docs/results.md, benchmarks/precision_parts.py). In fp32 it is the
    plain sum, bit for bit.
    """
    shortcut = shortcut_of(block, x)
    if shortcut is None:
        return block.relu(residual)
    if residual.dtype != torch.float32 or shortcut.dtype != torch.float32:
        return block.relu(residual.float() + shortcut.float())
    return block.relu(residual + shortcut)


def _combine_fused(block: nn.Module, x: torch.Tensor, pre: torch.Tensor, bn: nn.BatchNorm2d,
                   want_low: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`_combine(block, x, bn(pre))` with bn, the addition (in fp32, as there) and the ReLU
    in one fused pass (reslab.kernels.fused_bn); with `want_low`, also the sum's bf16 copy
    that the next block's conv1 reads under autocast."""
    shortcut = shortcut_of(block, x)
    if shortcut is None:
        return batch_norm_act(bn, pre)
    return batch_norm_act(bn, pre, shortcut, want_low)


def init_he(model: nn.Module) -> None:
    """He (MSRA) normal initialisation of convs, BN weight 1 and bias 0 (Sec. 3.4).

    fan_out as in fb.resnet.torch and torchvision (std = sqrt(2 / (k*k*out_channels))).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
