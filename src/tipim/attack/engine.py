"""The attack loop (TIP-IM's Algorithm 1), composed from small parts: surrogate, transform,
objective (``Objective``), selector (``GreedyInsertion.step`` for the greedy steps), step rule.

Each face's step depends on that face alone (and its MMD group): the objective is the *sum* of
per-face terms, every step is normalised per face, and every random draw comes from the face's own
stream (``PerImageRandom``), so the batch size changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tipim.attack.balance import MemberBalance
from tipim.attack.dropout import FeatureDropout
from tipim.attack.objectives import Naturalness, Objective, judge
from tipim.attack.randomness import PerImageRandom, rng_for
from tipim.attack.selection import GreedyInsertion, SurrogatePass, TargetSelector
from tipim.attack.steps import MomentumStep, project


@dataclass
class AttackResult:
    x_p: torch.Tensor  # (B, C, H, W) in [0, 1], inside the eps-ball
    target: torch.Tensor  # (B,) index of the nearest target after the attack
    last_followed: torch.Tensor  # (B,) target the last step followed
    changes: torch.Tensor  # (B,) how often the followed target changed
    d_r: torch.Tensor  # (B,) D(x_p, x_r) under the surrogate
    d_t: torch.Tensor  # (B,) D(x_p, nearest target); surrogate_success(d_t, d_r) is the success test
    loss: torch.Tensor  # (steps,) mean objective per step
    choice_rank: torch.Tensor  # (greedy steps, B) the chosen target's place by nearness to the face then (0 = nearest)
    estimate_rank: torch.Tensor  # (greedy steps, B) the chosen candidate's place by the first-order estimate (0 = best)


class IdentityMaskAttack(nn.Module):
    """Compute identity masks for a batch of aligned faces against a target set.

    Args:
        surrogate: embedder (or ensemble) whose gradients drive the attack.
        step: momentum, step size, eps-ball projection.
        selector: greedy insertion, fixed, or nearest (dynamic) target.
        naturalness: ``gamma * MMD`` term, or None.
        transform: input diversity applied before the surrogate when computing gradients.
        metric: identity distance, ``l2`` (squared, normalised) or ``cosine``.
        random_start: start uniformly inside the eps-ball (PGD).
        grad_mode: ``loop`` (K backward passes through one graph) or ``batched`` (one vmapped pass).
        channels_last: run the surrogate in channels-last memory format (faster convolutions on
            CPU, see benchmarks/results; same results up to float rounding).
        balance: how the members of an ensemble surrogate share each step (``MemberBalance``);
            None = the plain summed objective. A single surrogate has nothing to balance.
        away: weight of ``D(x_p, x_r)`` in the objective (1 = the paper; see
            ``relative_identity_loss``).
        feature_dropout: share of the surrogate's convolution outputs dropped in each gradient
            pass (``FeatureDropout``, DFANet); 0 = off.
        compile: ``torch.compile`` the surrogate's forward (and so its backward): ``True`` for
            inductor, or a backend (a name or a callable). It pays on a GPU (2.5-2.7x on the
            engine at batch 512, H200: ``benchmarks/bench_device.py --compile``); on a 2-core CPU
            it is slower (43 against 35 ms per forward and backward, after 31 s of compiling).
            An ensemble's per-member pass (``balance``) stays eager.
    """

    def __init__(
        self,
        surrogate: nn.Module,
        step: MomentumStep | None = None,
        selector: TargetSelector | None = None,
        naturalness: Naturalness | None = None,
        transform: nn.Module | None = None,
        metric: str = "l2",
        random_start: bool = False,
        grad_mode: str = "loop",
        channels_last: bool = True,
        balance: MemberBalance | None = None,
        away: float = 1.0,
        feature_dropout: float = 0.0,
        compile: bool | str | Callable = False,
    ):
        super().__init__()
        if compile and feature_dropout > 0:
            raise ValueError("compile and feature_dropout cannot be combined: the dropout switches hooks on and off inside the compiled "
                             "network; turn one of them off")
        self.surrogate = surrogate
        self.step = step or MomentumStep()
        self.selector = selector or GreedyInsertion()
        self.transform = transform
        members = getattr(surrogate, "members", None)
        balance = balance if balance is not None and members is not None and len(members) > 1 else None
        self.objective = Objective(naturalness, metric, away, balance, grad_mode)
        self.random_start, self.channels_last = random_start, channels_last
        if channels_last:
            self.surrogate.to(memory_format=torch.channels_last)
        self.dropout = FeatureDropout(feature_dropout).attach(surrogate) if feature_dropout > 0 else None
        # kept out of the module tree, so that the weights are not registered twice
        self.__dict__["_network"] = torch.compile(self.surrogate, backend="inductor" if compile is True else compile) if compile else self.surrogate

    @property
    def metric(self) -> str:
        """The identity distance, the objective's: the selector and the verdicts use the same one."""
        return self.objective.metric

    @property
    def compiled(self) -> bool:
        """Whether the surrogate runs through ``torch.compile`` (not safe to call from two threads)."""
        return self._network is not self.surrogate

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return F.normalize(self._network(x), dim=-1)

    def embed_parts(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The ensemble members' blocks of ``embed(x)`` (their concatenation has norm 1)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.surrogate.member_outputs(x)

    @torch.no_grad()
    def embed_targets(self, targets: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        return torch.cat([self.embed(targets[i : i + batch_size]) for i in range(0, len(targets), batch_size)])

    def forward(
        self,
        x_r: torch.Tensor,
        t_emb: torch.Tensor,
        steps: int | None = None,
        on_step=None,
        view: nn.Module | None = None,
        rng: PerImageRandom | None = None,
        groups: torch.Tensor | None = None,
    ) -> AttackResult:
        """``x_r`` (B, 3, 112, 112) aligned faces in [0, 1], or with ``view`` (e.g.
        ``tipim.align.CropView``) faces in any pixel space that ``view`` maps differentiably to
        aligned crops: the mask is optimised, stepped and projected in those pixels.
        ``t_emb`` (K, D) normalised target embeddings. ``on_step(t, x, target_index, objective)``
        is called after every step (logging, checks). ``rng``: each face's random stream (default:
        seeded from torch's global generator); ``groups``: each face's MMD group id (default:
        consecutive runs of ``naturalness.group``)."""
        steps = self.step.steps if steps is None else steps
        to_crop = view if view is not None else (lambda v: v)
        x_r = x_r.detach()
        with torch.no_grad():
            crop_r = to_crop(x_r)
            n_r = self.embed(crop_r)
        rng = rng_for(x_r, rng)
        idx = self.selector.initial(n_r, t_emb, self.metric, rng)
        changes = torch.zeros_like(idx)
        x = x_r.clone()
        if self.random_start:
            x = project(x + (rng.rand(*x.shape[1:], dtype=x.dtype) * 2 - 1) * self.step.eps, x_r, self.step.eps, self.step.norm)
        g = torch.zeros_like(x)
        naturalness = self.objective.naturalness if self.objective.natural_on else None
        mmd_groups = naturalness.groups(len(x), groups, x.device) if naturalness is not None else None
        history, ranks, estimate_ranks = [], [], []
        e_now = None if self.random_start else n_r  # the surrogate's embedding of the current x, when known
        with torch.enable_grad():
            for t in range(steps):
                x = x.detach().requires_grad_(True)
                now = self._surrogate_pass(x, to_crop, crop_r, rng, naturalness, mmd_groups)
                if self.selector.evaluates_candidates(t):
                    with torch.no_grad():  # the face now (untransformed) orders the targets to try
                        e_now = self.embed(to_crop(x.detach())) if e_now is None else e_now
                    chosen = self.selector.step(t, now, g, e_now, x_r, n_r, t_emb, self.objective, self.step, lambda v: self.embed(to_crop(v)))
                    x, g, new, e_now = chosen.x, chosen.g, chosen.target, chosen.e_now
                    ranks.append(chosen.choice_rank)
                    estimate_ranks.append(chosen.estimate_rank)
                else:
                    new = self.selector.assign(t, now.n, t_emb, idx, self.metric)
                    g = self.step.accumulate(g, self.objective.gradient(x, now.n, n_r, t_emb, new, now.parts, now.natural))
                    x, e_now = self.step.update(x.detach(), x_r, g), None
                if t > 0:
                    changes += (new != idx).long()
                idx = new
                with torch.no_grad():  # stays on the device: no sync per step
                    history.append(self.objective.value(now.n.detach(), t_emb[idx], n_r, now.natural.detach() if now.natural is not None else None).mean())
                if on_step is not None:
                    on_step(t, x.detach(), idx, float(history[-1]))
        x = x.detach()
        with torch.no_grad():
            d_r, d_t, nearest = judge(self.embed(to_crop(x)), n_r, t_emb, self.metric)
        none = torch.zeros(0, len(x), dtype=torch.long, device=x.device)
        choice_rank = torch.stack(ranks) if ranks else none
        loss = torch.stack(history).float().cpu() if history else torch.zeros(0)
        return AttackResult(x, nearest, idx, changes, d_r, d_t, loss, choice_rank, torch.stack(estimate_ranks) if estimate_ranks else none)

    def _surrogate_pass(self, x, to_crop, crop_r, rng, naturalness, mmd_groups) -> SurrogatePass:
        """The step's forward: the crop through the input transform and the (dropped-out)
        surrogate, and the naturalness term on the untransformed crop."""
        crop = to_crop(x)
        seen = self.transform(crop, rng) if self.transform is not None else crop
        with self.dropout.active(rng) if self.dropout is not None else nullcontext():
            parts = self.embed_parts(seen) if self.objective.balance is not None else None
            n = torch.cat(parts, -1) if parts is not None else self.embed(seen)
        return SurrogatePass(x, n, parts, naturalness(crop, crop_r, rng, groups=mmd_groups) if naturalness is not None else None)


__all__ = ["AttackResult", "IdentityMaskAttack"]
