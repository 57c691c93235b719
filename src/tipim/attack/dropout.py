"""Feature dropout on the surrogate (DFANet, Zhong & Deng, IEEE TIFS 2021): a self-ensemble.

Each gradient pass drops a random share of every convolution's outputs, so each step attacks a
slightly different sub-network and the mask leans less on features that only one trained model
has; the idea is that what fools many sub-networks transfers better to unseen recognisers. The
clean surrogate still scores the greedy candidates and the result.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from tipim.attack.randomness import PerImageRandom


class FeatureDropout:
    """Forward hooks on a surrogate's ``nn.Conv2d`` layers that drop outputs while ``active``.

    Args:
        p: share of each convolution's outputs set to zero (the rest scaled by ``1/(1-p)``).

    Each face's drop masks come from its own random stream, so a face's mask does not depend on
    the faces batched with it. Hooks do nothing outside ``active``, which holds for the thread
    that entered it only: the photo writer's thread embeds with the same surrogate meanwhile.
    """

    def __init__(self, p: float = 0.1):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"feature dropout p must be in [0, 1), got {p}")
        self.p = p
        self._state = threading.local()
        self.layers = 0

    @property
    def _rng(self) -> PerImageRandom | None:
        return getattr(self._state, "rng", None)

    def attach(self, surrogate: nn.Module) -> FeatureDropout:
        convs = [m for m in surrogate.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"feature dropout found no nn.Conv2d layer in {type(surrogate).__name__}")
        for m in convs:
            m.register_forward_hook(self._drop)
        self.layers = len(convs)
        return self

    def _drop(self, module: nn.Module, inputs, out: torch.Tensor) -> torch.Tensor | None:
        if self._rng is None:
            return None
        if len(self._rng) != len(out):
            raise ValueError(f"feature dropout has {len(self._rng)} random streams for a batch of {len(out)}")
        keep = self._rng.rand(*out.shape[1:], dtype=out.dtype) >= self.p
        return out * keep.to(out.device) / (1.0 - self.p)

    @contextmanager
    def active(self, rng: PerImageRandom) -> Iterator[None]:
        self._state.rng = rng
        try:
            yield
        finally:
            self._state.rng = None


__all__ = ["FeatureDropout"]
