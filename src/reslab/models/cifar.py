"""The CIFAR-10 networks of Sec. 4.2: 6n+2 layers on 32x32 inputs.

A 3x3 conv with 16 filters, then three stages of n basic blocks (2n 3x3 layers each) with
16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps, global average pool, fc.
"""

from __future__ import annotations

from reslab.models.blocks import BasicBlock
from reslab.models.network import ResNet

CIFAR_WIDTHS = (16, 32, 64)

#: the depths of Table 6 (n = 3, 5, 7, 9, 18, 200).
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)


def is_cifar_depth(depth: int) -> bool:
    """True for depths of the form 6n+2 with n >= 1."""
    return depth >= 8 and (depth - 2) % 6 == 0


def cifar_resnet(depth: int, num_classes: int = 10, shortcut: str | None = "A") -> ResNet:
    """A 6n+2-layer CIFAR network; `shortcut=None` gives the plain twin."""
    if not is_cifar_depth(depth):
        raise ValueError(f"CIFAR depth must be 6n+2 (8, 14, 20, ...), got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, (n, n, n), CIFAR_WIDTHS, "cifar", num_classes, shortcut)
