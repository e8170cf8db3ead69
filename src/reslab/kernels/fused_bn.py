"""ReLU(BN(x)) and ReLU(BN(x) + shortcut) in training, fused (Sec. 3.4, Eqn. 1; issue 25).

`batch_norm_act(bn, x, residual, want_low)` is what a block calls in place of
`relu(bn(x))` / `relu(bn(x) + shortcut)` when its `fused_bn` is on: one autograd node
running the compiled kernels of `fused_bn.cpp` (training statistics, running-statistics
update, normalisation, residual add, ReLU and, with `want_low`, the bf16 copy of the fp32
output that the next convolution reads under autocast; backward: two passes). The module
stays the `nn.BatchNorm2d` it was, so state_dicts, checkpoints and eval are unchanged.
Anything the kernels do not cover (NCHW, fp16, no affine parameters, hooks, no
extension) runs the eager ops, with the same results.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reslab.kernels import load_extension


class _BatchNormAct(torch.autograd.Function):
    """y = relu(bn(x) [+ residual]) with batch statistics, and y's bf16 copy (`want_low`);
    gradients for x, weight, bias and the residual. Written by hand because eager ops make
    five to seven passes over the activations here and the kernels two (docs/cpu-profile.md)."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, running_mean, running_var, momentum: float,
                eps: float, want_low: bool):
        ext = load_extension()
        y, y_low, mean, invstd = ext.forward(x, weight, bias, residual, running_mean,
                                             running_var, momentum, eps, want_low)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None
        ctx.has_residual = residual is not None
        # With a residual ReLU's mask needs the output; without, it is recomputed from x.
        ctx.save_for_backward(x, weight, bias, mean, invstd,
                              y if residual is not None else None)
        return y, y_low

    @staticmethod
    def backward(ctx, grad_y, grad_low):
        x, weight, bias, mean, invstd, y = ctx.saved_tensors
        dx, dw, db, dres = load_extension().backward(grad_y, grad_low, x, y, weight, bias,
                                                     mean, invstd)
        return (dx, dw, db, dres if ctx.has_residual else None, None, None, None, None, None)


def fusable(bn: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None) -> bool:
    """Whether the kernels cover this call (else `batch_norm_act` runs the eager ops)."""
    return (type(bn) is nn.BatchNorm2d and bn.training and bn.affine
            and not (bn._forward_hooks or bn._forward_pre_hooks)
            and bn.weight.dtype == torch.float32 and bn.bias.dtype == torch.float32
            and (bn.running_mean is None or bn.running_mean.dtype == torch.float32)
            and x.device.type == "cpu" and x.dim() == 4
            and x.dtype in (torch.float32, torch.bfloat16)
            and x.is_contiguous(memory_format=torch.channels_last)
            and x.numel() // max(x.shape[1], 1) > 1
            and (residual is None or (residual.shape == x.shape and residual.device == x.device))
            and load_extension() is not None)


def batch_norm_act(bn: nn.BatchNorm2d, x: torch.Tensor, residual: torch.Tensor | None = None,
                   want_low: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(relu(bn(x)), None) or, with `residual`, (relu(bn(x) + residual) in fp32, its bf16
    copy when `want_low` and x is bf16, else None), as the eager block computes them
    (`blocks._combine`: the sum in fp32 under autocast), in training mode."""
    want_low = want_low and x.dtype == torch.bfloat16 and residual is not None
    if not fusable(bn, x, residual):
        return _eager(bn, x, residual, want_low)
    # nn.BatchNorm2d.forward's bookkeeping, as torch does it.
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    if residual is not None and residual.dtype != torch.float32:
        residual = residual.float()
    args = (x, bn.weight, bn.bias, residual, bn.running_mean, bn.running_var, momentum,
            bn.eps, want_low)
    if torch._C._autograd._profiler_enabled():  # named in profiles (backward: its node)
        with torch.profiler.record_function("reslab::fused_batch_norm_act"):
            return _BatchNormAct.apply(*args)
    return _BatchNormAct.apply(*args)


def _eager(bn: nn.Module, x: torch.Tensor, residual: torch.Tensor | None, want_low: bool
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = bn(x)
    if residual is None:
        return F.relu(out), None
    if out.dtype != torch.float32 or residual.dtype != torch.float32:
        out, residual = out.float(), residual.float()
    y = F.relu(out + residual)
    return y, (y.to(torch.bfloat16) if want_low else None)
