"""Parameters, multiply-adds and the Table-1 view of a network.

Multiply-adds are measured with `torch.utils.flop_counter` (which counts 2 FLOPs per
multiply-add) on a real forward pass, not from a hand formula. Like the paper, the count
covers convolutions and the fc layer; BN, ReLU, additions and pooling are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Learnable parameters (BN's gamma/beta included, running statistics not)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def count_multiply_adds(model: nn.Module, input_size: int = 224, in_channels: int = 3) -> int:
    """Multiply-adds of one forward pass on a single `input_size` square image."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_channels, input_size, input_size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


@dataclass
class StageRow:
    """One row of Table 1: `name` is the module (`conv1`, `layer1`, ..., `fc`), `paper_name`
    the paper's (`conv1`, `conv2_x`, ..., `fc`)."""

    name: str
    output_size: tuple[int, int]
    channels: int
    blocks: str
    parameters: int
    paper_name: str = ""


@torch.no_grad()
def stage_table(model: nn.Module, input_size: int = 224, in_channels: int = 3) -> list[StageRow]:
    """Table 1 for one network: each stage's output size, blocks and parameters.

    As in Table 1, the conv1 row reports the 7x7 conv's output (112x112 at 224) and the
    3x3 max pool is listed at the start of conv2_x (56x56).
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_channels, input_size, input_size)
    model.forward_stem(x)  # validates the input
    conv = model.relu(model.bn1(model.conv1(x)))
    stem_params = sum(
        p.numel() for mod in (model.conv1, model.bn1) for p in mod.parameters()
    )
    stem_desc = "x".join(map(str, model.conv1.kernel_size)) + f", {model.conv1.out_channels}"
    stem_desc += f", stride {model.conv1.stride[0]}"
    pool_desc = "3x3 max pool, stride 2; " if isinstance(model.maxpool, nn.MaxPool2d) else ""
    rows = [StageRow("conv1", tuple(conv.shape[2:]), conv.shape[1], stem_desc, stem_params,
                     "conv1")]
    feats = model.forward_features(x)
    for i, (name, f) in enumerate(feats.items()):
        stage = getattr(model, name)
        first = stage[0]
        convs = [m for m in first.modules() if isinstance(m, nn.Conv2d) and m not in
                 (getattr(first, "downsample", None) or nn.Sequential()).modules()]
        desc = "[" + "; ".join(
            f"{m.kernel_size[0]}x{m.kernel_size[1]},{m.out_channels}" for m in convs
        ) + f"] x{len(stage)}"
        if i == 0:
            desc = pool_desc + desc
        rows.append(StageRow(name, tuple(f.shape[2:]), f.shape[1], desc,
                             sum(p.numel() for p in stage.parameters()), f"conv{i + 2}_x"))
    head_params = sum(p.numel() for p in model.fc.parameters())
    rows.append(StageRow("fc", (1, 1), model.fc.out_features,
                         f"global average pool, {model.fc.out_features}-d fc", head_params, "fc"))
    model.train(was_training)
    return rows


def format_info(model: nn.Module, input_size: int = 224) -> str:
    """The text `reslab info` prints."""
    spec = getattr(model, "reslab_spec", None)
    lines = []
    if spec is not None:
        short = f"shortcut {spec.shortcut}" if spec.residual else "plain (no shortcuts)"
        extra = ""
        if spec.family == "imagenet" and spec.depth >= 50:
            extra = ", stride on " + ("1x1 (paper)" if spec.stride_in_1x1 else "3x3 (torchvision)")
        lines.append(f"{spec.name}: {spec.family} net, {spec.depth} layers, {short}{extra}, "
                     f"{spec.num_classes} classes")
    lines.append(f"input {input_size}x{input_size}")
    lines.append(f"{'stage':8s} {'module':7s} {'output':>9s} {'channels':>8s} {'params':>12s}"
                 "  blocks")
    for r in stage_table(model, input_size):
        size = f"{r.output_size[0]}x{r.output_size[1]}"
        lines.append(f"{r.paper_name:8s} {r.name:7s} {size:>9s} {r.channels:8d} "
                     f"{r.parameters:12,d}  {r.blocks}")
    params = count_parameters(model)
    macs = count_multiply_adds(model, input_size)
    lines.append(f"parameters: {params:,}")
    lines.append(f"multiply-adds: {macs:,} ({macs / 1e9:.2f} G, the unit of Table 1's FLOPs)")
    return "\n".join(lines)
