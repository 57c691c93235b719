"""How each image picks its target identity among the K of the target set.

The engine asks a selector two things: whether this step evaluates one candidate step per
target (greedy insertion), and otherwise which target each image follows.
"""

from __future__ import annotations

import torch
from torch import nn

from tipim.attack.objectives import identity_distance


class TargetSelector(nn.Module):
    gain_reduce: str = "max"

    def evaluates_candidates(self, step: int) -> bool:
        return False

    def initial(self, e_r: torch.Tensor, targets: torch.Tensor, metric: str) -> torch.Tensor:
        """Target index per image before the first step: the nearest one to the original face."""
        return identity_distance(e_r[:, None], targets[None], metric).argmin(1)

    def assign(self, step: int, e_x: torch.Tensor, targets: torch.Tensor, current: torch.Tensor, metric: str) -> torch.Tensor:
        return current


class GreedyInsertion(TargetSelector):
    """TIP-IM's Algorithm 1: at every ``every``-th step each image tries one step towards each
    target and keeps the candidate with the largest gain (``gain='max'``: Eq. 7; ``'sum'``:
    Center-Opt). In between, the chosen target is kept (``every=1`` is the paper)."""

    def __init__(self, gain: str = "max", every: int = 1):
        super().__init__()
        if gain not in ("max", "sum"):
            raise ValueError(f"gain must be 'max' or 'sum', got {gain!r}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.gain_reduce, self.every = gain, every

    def evaluates_candidates(self, step: int) -> bool:
        return step % self.every == 0


class FixedTarget(TargetSelector):
    """One target per image for the whole run: ``nearest`` (to the original face, the easiest),
    ``random`` (seeded per batch), or a fixed index of the target set."""

    def __init__(self, target: str | int = "nearest"):
        super().__init__()
        if not (isinstance(target, int) or target in ("nearest", "random")):
            raise ValueError(f"target must be 'nearest', 'random' or an index, got {target!r}")
        self.target = target

    def initial(self, e_r, targets, metric):
        if self.target == "nearest":
            return super().initial(e_r, targets, metric)
        if self.target == "random":
            return torch.randint(len(targets), (len(e_r),), device=e_r.device)
        if not 0 <= self.target < len(targets):
            raise ValueError(f"target index {self.target} is outside the target set of {len(targets)}")
        return torch.full((len(e_r),), self.target, dtype=torch.long, device=e_r.device)


class NearestTarget(TargetSelector):
    """MT-DIM's dynamic assignment: every step, follow the target nearest the current image."""

    def assign(self, step, e_x, targets, current, metric):
        return identity_distance(e_x.detach()[:, None], targets[None], metric).argmin(1)


__all__ = ["FixedTarget", "GreedyInsertion", "NearestTarget", "TargetSelector"]
