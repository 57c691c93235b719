"""PReLU with a faster backward on the CPU, the same bits as torch's.

torch's CPU PReLU backward (``_prelu_kernel_backward``) also computes the slope's gradient, and
it is slow: on a 1 x 128 x 56 x 56 activation it takes ~1 ms, 30x its forward (so does a
per-channel ``torch.where``), and over MobileFaceNet's 34 PReLUs the profiler put it at 13-20% of a batch-1
forward and backward. Here the forward is ``x * d`` with ``d = 1 if x > 0 else w`` (a constant,
no gradient), built from three vectorised element-wise kernels: ``sign(threshold(x, 0, -1))`` is
+1 where x > 0 and -1 elsewhere, and ``prelu`` of that with slope ``-w`` turns it into 1 or ``w``
exactly. ``x * 1`` and ``x * w`` are torch's own PReLU values, and autograd's backward of the
product, ``g * d``, rounds as torch's kernel does, so output and gradient are the same to the
bit (tested, with exact zeros and negative slopes). The backward is then one C++ kernel: no
Python in autograd's loop, and several backwards through one graph (the greedy step's K
candidate gradients) share ``d``. fp32 forward and backward of arcface-mbf:
``benchmarks/results/prelu_backward.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def prelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.prelu(x, weight)`` (``weight``: 1 or C slopes for (N, C, ...) inputs). When only ``x``
    needs a gradient and it is on the CPU, ``x * d`` as above; elsewhere (a GPU, a slope being
    trained, no gradient) torch's own."""
    if x.device.type != "cpu" or weight.requires_grad or not (torch.is_grad_enabled() and x.requires_grad):
        return F.prelu(x, weight)
    with torch.no_grad():
        d = F.prelu(F.threshold(x, 0.0, -1.0).sign_(), -weight)
    return x * d


class FastPReLU(nn.Module):
    """onnx2torch's ``OnnxPReLU`` call, ``(input, slope)`` with the slope a graph constant, through
    ``prelu``; a slope of another shape than one per channel (or one for all) keeps the
    converter's own formula. ``fast = False`` runs the converter's module (torch's backward), for
    comparing the two."""

    def __init__(self, fallback: nn.Module):
        super().__init__()
        self.fallback, self.fast = fallback, True

    def forward(self, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        per_channel = slope.numel() == 1 or (x.dim() > 1 and slope.shape[0] == x.shape[1] and all(s == 1 for s in slope.shape[1:]))
        if not (self.fast and per_channel) or torch.onnx.is_in_onnx_export():
            return self.fallback(x, slope)
        return prelu(x, slope.reshape(-1))


def speed_up_prelu(net: nn.Module) -> nn.Module:
    """``net`` (converted by onnx2torch) with each ``OnnxPReLU`` routed through ``prelu``: the
    same outputs and gradients, bit for bit; in place, returned for chaining."""
    from onnx2torch.node_converters.activations import OnnxPReLU

    for name, module in list(net.named_modules()):
        if type(module) is OnnxPReLU:
            parent, _, leaf = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, leaf, FastPReLU(module))
    return net


__all__ = ["FastPReLU", "prelu", "speed_up_prelu"]
