"""The ImageNet networks of Table 1: ResNet/plain-18, 34, 50, 101, 152 at 224x224."""

from __future__ import annotations

from reslab.models.blocks import BasicBlock, Bottleneck
from reslab.models.network import ResNet

IMAGENET_WIDTHS = (64, 128, 256, 512)

#: depth -> (block, blocks per stage conv2_x..conv5_x), Table 1.
IMAGENET_CONFIGS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def imagenet_resnet(
    depth: int,
    num_classes: int = 1000,
    shortcut: str | None = "B",
    stride_in_1x1: bool = True,
) -> ResNet:
    """A Table-1 network; `shortcut=None` gives the plain twin (Fig. 3 middle)."""
    block, layers = IMAGENET_CONFIGS[depth]
    return ResNet(block, layers, IMAGENET_WIDTHS, "imagenet", num_classes, shortcut, stride_in_1x1)
