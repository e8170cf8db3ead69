"""Layer responses (Figure 7): the standard deviation of every 3x3 layer's output after
its BN and before the nonlinearity; in a residual block the BN output before the
addition, i.e. the residual function's response (Sec. 4.2, "Analysis of Layer
Responses")."""

from __future__ import annotations

import io
import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from reslab.atomic_write import atomic_write_bytes


def response_layers(model: nn.Module) -> OrderedDict[str, nn.BatchNorm2d]:
    """Every BatchNorm2d that follows a 3x3 conv, in network order, keyed by module name:
    the stem's `bn1` (a 3x3 conv in CIFAR nets) and the `bnK` after each 3x3 `convK` of
    the blocks (bn1 and bn2 of a BasicBlock, bn2 of a Bottleneck)."""
    layers: OrderedDict[str, nn.BatchNorm2d] = OrderedDict()
    for name, module in model.named_modules():
        for k in (1, 2, 3):
            conv, bn = getattr(module, f"conv{k}", None), getattr(module, f"bn{k}", None)
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    and tuple(conv.kernel_size) == (3, 3)):
                layers[f"{name}.bn{k}" if name else f"bn{k}"] = bn
    return layers


@torch.no_grad()
def layer_response_stds(
    model: nn.Module,
    images: torch.Tensor,
    preprocess,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
) -> OrderedDict[str, float]:
    """Std of each 3x3 layer's response (see `response_layers`) over `images` (uint8,
    N x C x H x W), in network order. The std is over all elements of the layer's output
    (images, channels and positions), from float64 sums and sums of squares accumulated
    over batches. The model runs in eval mode (BN with its running statistics)."""
    device = torch.device(device)
    layers = response_layers(model)
    sums = {name: [0.0, 0.0, 0] for name in layers}

    def hook_for(name: str):
        def hook(module, inputs, output):
            x = output.detach().to(torch.float64)
            acc = sums[name]
            acc[0] += float(x.sum())
            acc[1] += float((x * x).sum())
            acc[2] += x.numel()
        return hook

    handles = [bn.register_forward_hook(hook_for(name)) for name, bn in layers.items()]
    was_training = model.training
    model.eval()
    model.to(device)
    try:
        for i in range(0, len(images), batch_size):
            model(preprocess(images[i : i + batch_size].to(device)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out: OrderedDict[str, float] = OrderedDict()
    for name, (s, ss, n) in sums.items():
        mean = s / max(n, 1)
        out[name] = math.sqrt(max(ss / max(n, 1) - mean * mean, 0.0))
    return out


def plot_responses(stds: Mapping[str, Sequence[float]], path: str | os.PathLike,
                   title: str = "") -> None:
    """Figure 7: std of each layer's response per net, in network order (top) and sorted
    in descending order (bottom); a PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), dpi=100)
    for label, values in stds.items():
        style = "--" if label.startswith("plain") else "-"
        xs = range(1, len(values) + 1)
        top.plot(xs, list(values), style, label=label, linewidth=1.5)
        bottom.plot(xs, sorted(values, reverse=True), style, label=label, linewidth=1.5)
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        top.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
