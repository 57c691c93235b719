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
candidate gradients) share ``d``. ``call_directly`` puts it (and the convolutions) into the zoo's
converted ONNX graphs. fp32 forward and backward of arcface-mbf against onnx2torch's own graph:
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


def onnx_prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """onnx2torch's ``OnnxPReLU()(x, slope)`` through ``prelu`` when the slope is one per channel
    or one for all (the converter's own test); any other slope keeps the converter's formula."""
    if slope.numel() == 1 or (x.dim() > 1 and slope.shape[0] == x.shape[1] and all(s == 1 for s in slope.shape[1:])):
        return prelu(x, slope.reshape(-1))
    from onnx2torch.node_converters.activations import OnnxPReLU

    return OnnxPReLU()(x, slope)


def call_directly(net: nn.Module) -> nn.Module:
    """``net`` (an onnx2torch ``GraphModule``) with each ``OnnxPReLU`` call replaced by
    ``onnx_prelu`` and each zero-padded ``Conv2d`` call by ``torch.conv2d`` on the module's own
    parameters: the same kernels and bits, without ``nn.Module``'s call path (~1 ms of Python per
    forward of MobileFaceNet's 83 calls on the CPU, where a batch-1 forward takes ~10 ms). The
    modules stay registered: parameters, ``state_dict`` and ``.to()`` are unchanged. In place,
    returned for chaining."""
    from onnx2torch.node_converters.activations import OnnxPReLU

    graph = net.graph
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        module = net.get_submodule(node.target)
        with graph.inserting_before(node):
            if type(module) is OnnxPReLU:
                call = graph.call_function(onnx_prelu, node.args, node.kwargs)
            elif type(module) is nn.Conv2d and module.padding_mode == "zeros" and len(node.args) == 1 and not node.kwargs:
                weight = graph.get_attr(f"{node.target}.weight")
                bias = graph.get_attr(f"{node.target}.bias") if module.bias is not None else None
                call = graph.call_function(torch.conv2d, (node.args[0], weight, bias, module.stride, module.padding, module.dilation, module.groups))
            else:
                continue
        node.replace_all_uses_with(call)
        graph.erase_node(node)
    net.recompile()
    return net


__all__ = ["call_directly", "onnx_prelu", "prelu"]
