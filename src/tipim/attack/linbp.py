"""Linear backpropagation (LinBP, Guo, Li & Chen, NeurIPS 2020) on the surrogate.

The gradient that drives the mask passes the last activations as if they were the identity: the
forward values are unchanged (so the loss, the greedy candidates and the result are scored as
before), but the step no longer follows the surrogate's own piecewise-linear switching in its
deep layers, which is the part least shared with other networks. Reported to raise black-box
transfer on image classifiers; measured here on photos (results/photo_transfer/).
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.PReLU, nn.LeakyReLU)
ACTIVATION_NAMES = ("OnnxPReLU",)  # onnx2torch's PReLU (the ONNX zoo models)


class LinearBackward:
    """Forward hooks on the last ``share`` of a surrogate's activations that make their backward
    pass the identity: ``x + (act(x) - x).detach()``. Only while gradients are recorded; under
    ``no_grad`` (candidate and final embeddings) the hooks do nothing.

    Args:
        share: fraction of the activations, counted from the output end, in (0, 1].
    """

    def __init__(self, share: float = 0.5):
        if not 0.0 < share <= 1.0:
            raise ValueError(f"linear_backward share must be in (0, 1], got {share}")
        self.share = share
        self.layers = 0

    def attach(self, surrogate: nn.Module) -> LinearBackward:
        acts = [m for m in surrogate.modules() if isinstance(m, ACTIVATIONS) or type(m).__name__ in ACTIVATION_NAMES]
        if not acts:
            raise ValueError(f"linear backward found no activation layer ({', '.join(a.__name__ for a in ACTIVATIONS)}) in {type(surrogate).__name__}")
        chosen = acts[len(acts) - max(1, round(self.share * len(acts))):]
        for m in chosen:
            m.register_forward_hook(self._linear)
        self.layers = len(chosen)
        return self

    @staticmethod
    def _linear(module: nn.Module, inputs, out: torch.Tensor) -> torch.Tensor | None:
        if not torch.is_grad_enabled():
            return None
        x = inputs[0]
        return x + (out - x).detach()


__all__ = ["LinearBackward"]
