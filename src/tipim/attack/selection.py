"""How each image picks its target identity among the K of the target set.

The engine asks a selector two things: whether this step evaluates one candidate step per
target (greedy insertion), and otherwise which target each image follows.
"""

from __future__ import annotations

import torch
from torch import nn

from tipim.attack import objectives
from tipim.attack.objectives import identity_distance


def nearest_target(e: torch.Tensor, targets: torch.Tensor, metric: str) -> torch.Tensor:
    """Index of the target nearest each embedding ``e`` (B, D)."""
    return identity_distance(e.detach()[:, None], targets[None], metric).argmin(1)


class TargetSelector(nn.Module):
    """Which target each face follows. Only a selector that ``evaluates_candidates`` (greedy
    insertion) has a gain to score candidate steps with (``gain``: ``'max'`` or ``'sum'``)."""

    def evaluates_candidates(self, step: int) -> bool:
        return False

    def initial(self, e_r: torch.Tensor, targets: torch.Tensor, metric: str, rng=None) -> torch.Tensor:
        """Target index per image before the first step: the nearest one to the original face
        (``rng``: each image's ``PerImageRandom`` stream, for selectors that draw)."""
        return nearest_target(e_r, targets, metric)

    def assign(self, step: int, e_x: torch.Tensor, targets: torch.Tensor, current: torch.Tensor, metric: str) -> torch.Tensor:
        return current


class GreedyInsertion(TargetSelector):
    """TIP-IM's Algorithm 1: at every ``every``-th step each image tries one step towards each
    target and keeps the candidate with the largest gain (``gain='max'``: Eq. 7; ``'sum'``:
    Center-Opt). In between, the chosen target is kept (``every=1`` is the paper).

    ``shortlist=m`` tries only the m targets nearest each face (its untransformed embedding) at
    that step, after a first step that tries all K (0 = all K always, the paper): m gradients
    and m candidate forwards instead of K. It makes the paper's choice whenever that choice is
    among the m nearest (``AttackResult.choice_rank`` < m), which after the first step it nearly
    always is (results/greedy_shortlist).

    ``shortlist=1`` has nothing left to score after the first step: at each ``every``-th step each
    face follows the target nearest the embedding the step's gradient pass already computed
    (through the input transform and feature dropout, if any; MT-DIM's rule), so it skips the
    candidate forward too (one surrogate forward per step fewer). Without either, that embedding
    is the face's own, and the choices are those of scoring the one candidate, bit for bit.

    ``confirm=m`` keeps every candidate's gradient but forwards only the m candidates that a
    first-order estimate ranks best (value now + gradient . step, no network pass), and keeps the
    best of those by the exact gain: the paper's choice whenever that choice is among the m
    (``AttackResult.estimate_rank`` < m; ``benchmarks/greedy_confirm.py`` measures how often).
    """

    def __init__(self, gain: str = "max", every: int = 1, shortlist: int = 0, confirm: int = 0):
        super().__init__()
        if confirm < 0:
            raise ValueError(f"confirm must be >= 0 (0 = a forward for every candidate), got {confirm}")
        self.confirm = confirm
        if gain not in ("max", "sum"):
            raise ValueError(f"gain must be 'max' or 'sum', got {gain!r}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if shortlist < 0:
            raise ValueError(f"shortlist must be >= 0 (0 = every target), got {shortlist}")
        self.gain, self.every, self.shortlist = gain, every, shortlist

    def evaluates_candidates(self, step: int) -> bool:
        return step % self.every == 0 and (step == 0 or self.shortlist != 1)

    def assign(self, step, e_x, targets, current, metric):
        if self.shortlist == 1 and step > 0 and step % self.every == 0:  # the nearest to the step's own embedding: no candidate forward
            return nearest_target(e_x, targets, metric)
        return current

    def candidates(self, e_x: torch.Tensor, targets: torch.Tensor, metric: str, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The targets to try from the face now (``e_x`` (B, D)): every target's index ordered by
        nearness (B, K), and the shortlist (B, m), or None for all K."""
        nearest = identity_distance(e_x[:, None], targets[None], metric).argsort(1)
        return nearest, (nearest[:, : self.shortlist] if step > 0 and 0 < self.shortlist < nearest.shape[1] else None)

    def confirmed(self, order: torch.Tensor) -> torch.Tensor | None:
        """Which candidates get a forward: the ``confirm`` best by the engine's first-order
        estimate (``order`` (B, C), best first), or None for all of them."""
        return order[:, : self.confirm] if 0 < self.confirm < order.shape[1] else None

    def best(self, e_c: torch.Tensor, e_r: torch.Tensor, targets: torch.Tensor, metric: str) -> torch.Tensor:
        """Which candidate step each face keeps: the largest gain (Eq. 7) over the candidates'
        embeddings ``e_c`` (B, C, D), against the originals ``e_r`` (B, D) and all targets."""
        d_r = identity_distance(e_c, e_r[:, None], metric)
        d_t = identity_distance(e_c[:, :, None], targets[None, None], metric)
        return objectives.gain(d_r, d_t, self.gain).argmax(1)


class FixedTarget(TargetSelector):
    """One target per image for the whole run: ``nearest`` (to the original face, the easiest),
    ``random`` (from each face's own stream), or a fixed index of the target set."""

    def __init__(self, target: str | int = "nearest"):
        super().__init__()
        if not (isinstance(target, int) or target in ("nearest", "random")):
            raise ValueError(f"target must be 'nearest', 'random' or an index, got {target!r}")
        self.target = target

    def initial(self, e_r, targets, metric, rng=None):
        if self.target == "nearest":
            return super().initial(e_r, targets, metric)
        if self.target == "random":
            from tipim.attack.randomness import rng_for

            return rng_for(e_r, rng).integers(0, len(targets), 1)[:, 0].to(e_r.device)
        if not 0 <= self.target < len(targets):
            raise ValueError(f"target index {self.target} is outside the target set of {len(targets)}")
        return torch.full((len(e_r),), self.target, dtype=torch.long, device=e_r.device)


class NearestTarget(TargetSelector):
    """MT-DIM's dynamic assignment: every step, follow the target nearest the current image."""

    def assign(self, step, e_x, targets, current, metric):
        return nearest_target(e_x, targets, metric)


__all__ = ["FixedTarget", "GreedyInsertion", "NearestTarget", "TargetSelector"]
