"""How each image picks its target identity among the K of the target set.

The engine asks a selector whether this step evaluates candidate steps (greedy insertion: then
``GreedyInsertion.step`` makes the step), and otherwise which target each image follows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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

    def assign(self, step: int, embeddings: torch.Tensor, targets: torch.Tensor, current: torch.Tensor, metric: str) -> torch.Tensor:
        return current


@dataclass
class SurrogatePass:
    """One step's forward pass: the mask variable ``x`` (requires grad), its embedding ``n``
    through the transform (``parts``: an ensemble's member blocks when they are balanced), and its
    naturalness term per face (or None)."""

    x: torch.Tensor
    n: torch.Tensor
    parts: list[torch.Tensor] | None
    natural: torch.Tensor | None


@dataclass
class GreedyStep:
    """What a greedy step chose: the new ``x`` and momentum ``g``, the target each face follows,
    the surrogate's embedding of the new face (``e_now``), and the chosen target's place by
    nearness (``choice_rank``) and by the first-order estimate (``estimate_rank``), 0 = first."""

    x: torch.Tensor
    g: torch.Tensor
    target: torch.Tensor
    e_now: torch.Tensor
    choice_rank: torch.Tensor
    estimate_rank: torch.Tensor


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

    def assign(self, step, embeddings, targets, current, metric):
        if self.shortlist == 1 and step > 0 and step % self.every == 0:  # the nearest to the step's own embedding: no candidate forward
            return nearest_target(embeddings, targets, metric)
        return current

    def candidates(self, embeddings: torch.Tensor, targets: torch.Tensor, metric: str, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The targets to try from the face now (``embeddings`` (B, D)): every target's index ordered by
        nearness (B, K), and the shortlist (B, m), or None for all K."""
        nearest = identity_distance(embeddings[:, None], targets[None], metric).argsort(1)
        return nearest, (nearest[:, : self.shortlist] if step > 0 and 0 < self.shortlist < nearest.shape[1] else None)

    def confirmed(self, order: torch.Tensor) -> torch.Tensor | None:
        """Which candidates get a forward: the ``confirm`` best by the objective's first-order
        estimate (``order`` (B, C), best first), or None for all of them."""
        return order[:, : self.confirm] if 0 < self.confirm < order.shape[1] else None

    def step(self, t: int, now: SurrogatePass, g: torch.Tensor, e_now: torch.Tensor, x_r: torch.Tensor, n_r: torch.Tensor,
             t_emb: torch.Tensor, objective, rule, embed: Callable[[torch.Tensor], torch.Tensor]) -> GreedyStep:
        """Algorithm 1's greedy step: from ``now`` (``e_now``: the surrogate's embedding of the
        untransformed face, which orders the targets to try), one candidate step per target to
        try (``objective``'s gradients, ``rule``'s momentum step, e.g. ``MomentumStep``), each
        scored by its gain on the surrogate (``embed``: mask variables -> normalised embeddings);
        each face keeps its best candidate."""
        x = now.x.detach()
        rows = torch.arange(len(x), device=x.device)
        near, cand = self.candidates(e_now, t_emb, objective.metric, t)  # cand (B, m), or None: all K
        grads = objective.candidate_gradients(now.x, now.n, n_r, t_emb, cand, now.parts, now.natural)
        g_cand = rule.accumulate(g[:, None], grads)
        x_cand = rule.update(x[:, None], x_r[:, None], g_cand)
        with torch.no_grad():
            order = objective.estimate(x, x_cand, grads, now.n.detach(), n_r, t_emb, cand).argsort(1)
            keep = self.confirmed(order)  # (B, m) candidates to confirm with a forward, or None: all
            tried = x_cand if keep is None else x_cand[rows[:, None], keep]
            e_cand = embed(tried.flatten(0, 1)).view(len(x), tried.shape[1], -1)
            best = self.best(e_cand, n_r, t_emb, objective.metric)
            e_now = e_cand[rows, best]
            best = best if keep is None else keep[rows, best]  # index among the candidates
        new = best if cand is None else cand[rows, best]
        return GreedyStep(x_cand[rows, best], g_cand[rows, best], new, e_now,
                          (near == new[:, None]).long().argmax(1), (order == best[:, None]).long().argmax(1))

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

    def assign(self, step, embeddings, targets, current, metric):
        return nearest_target(embeddings, targets, metric)


__all__ = ["FixedTarget", "GreedyInsertion", "GreedyStep", "NearestTarget", "SurrogatePass", "TargetSelector"]
