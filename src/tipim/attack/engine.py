"""The attack loop, composed from small parts: surrogate, transform, objective, selector, step.

Each face's step depends on that face alone (and its MMD group): the objective is the *sum* of
per-face terms, every step is normalised per face, and every random draw comes from the face's own
stream (``PerImageRandom``), so the batch size changes nothing.

One forward pass per step serves every target: the loss is linear in the normalised embedding
``n`` (``D(n, t) - D(n, r) = 2 n.(r - t) + const``), so the K per-target gradients are K
vector-Jacobian products through one graph (``grad_mode='loop'``) or one batched product
(``'batched'``). Greedy insertion then evaluates all B*K candidate steps in a single forward.
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
from tipim.attack.objectives import Naturalness, judge, relative_identity_loss
from tipim.attack.randomness import PerImageRandom, rng_for
from tipim.attack.selection import GreedyInsertion, TargetSelector
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
        if grad_mode not in ("loop", "batched"):
            raise ValueError(f"grad_mode must be 'loop' or 'batched', got {grad_mode!r}")
        self.surrogate = surrogate
        self.step = step or MomentumStep()
        self.selector = selector or GreedyInsertion()
        self.naturalness = naturalness
        self.transform = transform
        if away < 0:
            raise ValueError(f"away must be >= 0, got {away}")
        self.metric, self.random_start, self.grad_mode, self.away = metric, random_start, grad_mode, away
        self.channels_last = channels_last
        members = getattr(surrogate, "members", None)
        self.balance = balance if balance is not None and members is not None and len(members) > 1 else None
        if channels_last:
            self.surrogate.to(memory_format=torch.channels_last)
        self.dropout = FeatureDropout(feature_dropout).attach(surrogate) if feature_dropout > 0 else None
        # kept out of the module tree, so that the weights are not registered twice
        self.__dict__["_network"] = torch.compile(self.surrogate, backend="inductor" if compile is True else compile) if compile else self.surrogate

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

    def _cotangents(self, e: torch.Tensor, n_r, t_emb, which: torch.Tensor | None) -> torch.Tensor:
        """d(sum_b L_b)/d embedding at ``e`` (B, D): (K, B, D) for every target, or (B, D) for
        target ``which`` per image (the loss is cheap: K small gradients, no network). A sum, not a
        mean, so that a face's gradient does not depend on the batch size."""
        leaf = e.requires_grad_(True)
        if which is None:
            losses = relative_identity_loss(leaf[:, None], t_emb[None], n_r[:, None], self.metric, self.away).sum(0)  # (K,)
            return torch.stack([torch.autograd.grad(losses[k], leaf, retain_graph=True)[0] for k in range(len(t_emb))])
        return torch.autograd.grad(relative_identity_loss(leaf, t_emb[which], n_r, self.metric, self.away).sum(), leaf)[0]

    def _vjp(self, out: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``v . d out / d x`` for one (B, D) or several (K, B, D) cotangents ``v``."""
        if v.dim() == out.dim():
            return torch.autograd.grad(out, x, grad_outputs=v, retain_graph=True)[0]
        if self.grad_mode == "batched":
            return torch.autograd.grad(out, x, grad_outputs=v, is_grads_batched=True, retain_graph=True)[0]
        return torch.stack([torch.autograd.grad(out, x, grad_outputs=v[k], retain_graph=True)[0] for k in range(len(v))])

    def _balanced_grads(self, x, parts, n_r, t_emb, which: torch.Tensor | None) -> torch.Tensor:
        """``_identity_grads`` with each member's gradient taken through its own graph and the
        members combined by ``self.balance`` from their own margins."""
        sizes = [p.shape[-1] for p in parts]
        leaf = torch.cat(parts, -1).detach()
        v = self._cotangents(leaf, n_r, t_emb, which)
        tgt = t_emb[:, None].expand(-1, len(x), -1) if which is None else t_emb[which]
        with torch.no_grad():  # per member: D_m(x, x_t) - D_m(x, x_r), (B,) or (K, B)
            blocks = zip(leaf.split(sizes, -1), tgt.split(sizes, -1), n_r.split(sizes, -1))
            margins = torch.stack([relative_identity_loss(e, t, r, self.metric, self.away) for e, t, r in blocks], -1)
        grads = [self._vjp(p, x, v_m.contiguous()) for p, v_m in zip(parts, v.split(sizes, -1))]
        g = self.balance.combine(grads, margins, batch_dims=1 if which is not None else 2)
        return g if which is not None else g.transpose(0, 1)

    def _identity_grads(self, x, n, n_r, t_emb, which: torch.Tensor | None, parts=None) -> torch.Tensor:
        """Gradients w.r.t. x of sum_b L_b for every target (which=None: (B, K, C, H, W)) or
        for one target per image (which: (B,) -> (B, C, H, W))."""
        if parts is not None:
            return self._balanced_grads(x, parts, n_r, t_emb, which)
        g = self._vjp(n, x, self._cotangents(n.detach(), n_r, t_emb, which))
        return g if which is not None else g.transpose(0, 1)

    def _first_order_order(self, x, x_cand, grads, n, n_r, t_emb, cand) -> torch.Tensor:
        """The candidates (B, C) ordered best first by a first-order estimate of the objective after
        each one's step: its value now (the gradient pass's embedding) plus gradient . step. It
        costs no network pass; ``GreedyInsertion(confirm=m)`` forwards only its m best."""
        targets = t_emb[None].expand(len(x), -1, -1) if cand is None else t_emb[cand]
        now = relative_identity_loss(n[:, None], targets, n_r[:, None], self.metric, self.away)
        change = (grads * (x_cand - x[:, None])).flatten(2).sum(-1)
        return (now + change).argsort(1)

    def _step_grad(self, x, n, n_r, t_emb, which: torch.Tensor, parts, natural: torch.Tensor | None) -> torch.Tensor:
        """The gradient of the whole objective, identity (target ``which`` per image) plus
        naturalness, in one backward pass: the view and the transform are walked once, not twice."""
        if parts is not None or natural is None:
            grad = self._identity_grads(x, n, n_r, t_emb, which, parts)
            return grad + torch.autograd.grad(natural.sum(), x)[0] if natural is not None else grad
        v = self._cotangents(n.detach(), n_r, t_emb, which)
        total = natural.sum()
        return torch.autograd.grad([n, total], x, grad_outputs=[v, torch.ones_like(total)])[0]

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
        rows = torch.arange(len(x), device=x.device)
        natural_on = self.naturalness is not None and self.naturalness.gamma > 0
        mmd_groups = self.naturalness.groups(len(x), groups, x.device) if natural_on else None
        history, ranks, estimate_ranks = [], [], []
        e_now = None if self.random_start else n_r  # the surrogate's embedding of the current x, when known
        with torch.enable_grad():
            for t in range(steps):
                x = x.detach().requires_grad_(True)
                crop = to_crop(x)
                seen = self.transform(crop, rng) if self.transform is not None else crop
                with self.dropout.active(rng) if self.dropout is not None else nullcontext():
                    parts = self.embed_parts(seen) if self.balance is not None else None
                    n = torch.cat(parts, -1) if parts is not None else self.embed(seen)
                natural = self.naturalness(crop, crop_r, rng, groups=mmd_groups) if natural_on else None
                if self.selector.evaluates_candidates(t):
                    natural_grad = torch.autograd.grad(natural.sum(), x, retain_graph=True)[0] if natural is not None else 0.0
                    with torch.no_grad():  # the face now (untransformed) orders the targets to try
                        e_now = self.embed(to_crop(x.detach())) if e_now is None else e_now
                    near, cand = self.selector.candidates(e_now, t_emb, self.metric, t)  # cand (B, m), or None: all K
                    if cand is None:
                        grads = self._identity_grads(x, n, n_r, t_emb, None, parts)
                    else:
                        grads = torch.stack([self._identity_grads(x, n, n_r, t_emb, cand[:, j], parts) for j in range(cand.shape[1])], 1)
                    grads = grads + (natural_grad[:, None] if natural is not None else 0.0)
                    g_cand = self.step.accumulate(g[:, None], grads)
                    x_cand = self.step.update(x.detach()[:, None], x_r[:, None], g_cand)
                    with torch.no_grad():
                        order = self._first_order_order(x.detach(), x_cand, grads, n.detach(), n_r, t_emb, cand)
                        keep = self.selector.confirmed(order)  # (B, m) candidates to confirm with a forward, or None: all
                        tried = x_cand if keep is None else x_cand[rows[:, None], keep]
                        e_cand = self.embed(to_crop(tried.flatten(0, 1))).view(len(x), tried.shape[1], -1)
                        best = self.selector.best(e_cand, n_r, t_emb, self.metric)
                        e_now = e_cand[rows, best]
                        best = best if keep is None else keep[rows, best]  # index among the candidates
                    new = best if cand is None else cand[rows, best]
                    x, g = x_cand[rows, best], g_cand[rows, best]
                    ranks.append((near == new[:, None]).long().argmax(1))
                    estimate_ranks.append((order == best[:, None]).long().argmax(1))
                else:
                    new = self.selector.assign(t, n, t_emb, idx, self.metric)
                    g = self.step.accumulate(g, self._step_grad(x, n, n_r, t_emb, new, parts, natural))
                    x, e_now = self.step.update(x.detach(), x_r, g), None
                if t > 0:
                    changes += (new != idx).long()
                idx = new
                with torch.no_grad():
                    obj = relative_identity_loss(n.detach(), t_emb[idx], n_r, self.metric, self.away)
                    history.append((obj + (natural.detach() if natural is not None else 0.0)).mean())  # stays on the device: no sync per step
                if on_step is not None:
                    on_step(t, x.detach(), idx, float(history[-1]))
        x = x.detach()
        with torch.no_grad():
            d_r, d_t, nearest = judge(self.embed(to_crop(x)), n_r, t_emb, self.metric)
        none = torch.zeros(0, len(x), dtype=torch.long, device=x.device)
        choice_rank = torch.stack(ranks) if ranks else none
        loss = torch.stack(history).float().cpu() if history else torch.zeros(0)
        return AttackResult(x, nearest, idx, changes, d_r, d_t, loss, choice_rank, torch.stack(estimate_ranks) if estimate_ranks else none)


__all__ = ["AttackResult", "IdentityMaskAttack"]
