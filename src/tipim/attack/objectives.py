"""The TIP-IM objective: relative identity loss, Gaussian-kernel MMD naturalness, and the gain.

Functional forms first (each checked against a direct computation in the tests), then thin
``nn.Module`` forms for YAML.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

METRICS = ("l2", "cosine")


def identity_distance(a: torch.Tensor, b: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """D between embeddings (broadcasting over leading dims): squared L2 of the normalised
    embeddings (= 2 - 2 cos), or cosine distance 1 - cos."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)
    return 2.0 - 2.0 * cos if metric == "l2" else 1.0 - cos


def judge(e_p: torch.Tensor, e_r: torch.Tensor, e_t: torch.Tensor, metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(d_r, d_t, nearest)`` per face: D to its original, D to its nearest target, that target's
    index. Embeddings ``e_p``, ``e_r`` (B, D) and targets ``e_t`` (K, D), in the attack's metric."""
    d_t, nearest = identity_distance(e_p[:, None], e_t[None], metric).min(1)
    return identity_distance(e_p, e_r, metric), d_t, nearest


def surrogate_success(d_t: torch.Tensor, d_r: torch.Tensor) -> torch.Tensor:
    """The success test on the surrogate (the paper's, and the manifest's ``surrogate_success``):
    the face is nearer its nearest target than its original photo, ``d_t < d_r`` from ``judge``."""
    return d_t < d_r


def relative_identity_loss(e_p: torch.Tensor, e_t: torch.Tensor, e_r: torch.Tensor, metric: str = "l2", away: float = 1.0) -> torch.Tensor:
    """Per image ``D(x_p, x_t) - away * D(x_p, x_r)``: closer to the target, away from the true
    identity (``away=1``: the paper). A smaller ``away`` spends the budget on reaching the target
    person rather than on leaving the original photo (results/ensemble_balance: dlib-resnet)."""
    return identity_distance(e_p, e_t, metric) - away * identity_distance(e_p, e_r, metric)


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5) -> torch.Tensor:
    """Sum of ``kernel_num`` Gaussian kernels on the rows of [x; y] (last dim = features), their
    bandwidths spread by ``kernel_mul`` around the mean pairwise squared distance (the usual
    multi-kernel MMD of Long et al. 2015, as in the official TIP-IM code). Batched over leading dims."""
    n = x.shape[-2] + y.shape[-2]
    # |a|^2 + |b|^2 - 2 a.b from one matrix product per set: faster than cdist's direct loop on a
    # few dozen rows, and a set's sums do not depend on how many sets are computed with it. The
    # norms are the product's diagonal, so a row's distance to itself is exactly 0. Computed
    # outside autocast: the distances cancel norms of ~1e4 down to ~1, below half precision.
    with torch.autocast(x.device.type, enabled=False):
        gram = _Gram.apply(x, y) if x.requires_grad and not y.requires_grad and torch.is_grad_enabled() else _pair_gram(x, y)[1]
    sq = gram.diagonal(dim1=-2, dim2=-1)
    d2 = (sq[..., :, None] + sq[..., None, :] - 2 * gram).clamp_min(0)
    bandwidth = (d2.detach().sum(dim=(-2, -1), keepdim=True) / max(n * n - n, 1)).clamp_min(1e-12)
    bandwidth = bandwidth / kernel_mul ** (kernel_num // 2)
    return sum(torch.exp(-d2 / (bandwidth * kernel_mul**i)) for i in range(kernel_num))


def _pair_gram(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of [x; y] as (sets, n, d), in float32 at least, and per set their Gram matrix (..., n, n)."""
    z = torch.cat([x, y], dim=-2)
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    n = z.shape[-2]
    flat = z.reshape(-1, n, z.shape[-1])
    return flat, torch.stack([m @ m.T for m in flat]).view(*z.shape[:-1], n) if len(flat) else z.new_zeros(*z.shape[:-1], n)


class _Gram(torch.autograd.Function):
    """``_pair_gram``'s Gram matrix with a backward for ``x``'s rows only (``y``, the originals'
    views, has no gradient): half of autograd's two (n, n) x (n, d) products, each row the same
    sums as autograd's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        flat, gram = _pair_gram(x, y)
        ctx.save_for_backward(flat)
        ctx.rows, ctx.x_shape, ctx.x_dtype = x.shape[-2], x.shape, x.dtype
        return gram

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (flat,) = ctx.saved_tensors
        k, n = ctx.rows, flat.shape[-2]
        g = grad.reshape(-1, n, n)
        # autograd's mm backward: G @ m for the left factor, G^T @ m for the right one (m.T), summed
        rows = [gs[:k] @ m + gs.T[:k] @ m for gs, m in zip(g, flat)]
        return torch.stack(rows).view(ctx.x_shape).to(ctx.x_dtype) if rows else grad.new_zeros(ctx.x_shape, dtype=ctx.x_dtype), None


def mmd(x: torch.Tensor, y: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5) -> torch.Tensor:
    """Biased squared MMD between sample sets ``x`` (..., n, d) and ``y`` (..., n, d)."""
    n = x.shape[-2]
    k = gaussian_kernel(x, y, kernel_mul, kernel_num)
    xx, yy = k[..., :n, :n], k[..., n:, n:]
    xy, yx = k[..., :n, n:], k[..., n:, :n]
    return (xx + yy - xy - yx).mean(dim=(-2, -1))


def gain(d_r: torch.Tensor, d_t: torch.Tensor, reduce: str = "max") -> torch.Tensor:
    """Greedy-insertion gain ``G = log(1 + max_t exp(D(x, x_r) - D(x, x_t)))`` (``reduce='sum'``:
    Center-Opt's ``log(1 + sum_t exp(...))``). ``d_r`` (...), ``d_t`` (..., K); computed stably."""
    z = d_r.unsqueeze(-1) - d_t
    if reduce == "max":
        return F.softplus(z.max(dim=-1).values)
    if reduce == "sum":
        return torch.logaddexp(torch.zeros_like(d_r), torch.logsumexp(z, dim=-1))
    raise ValueError(f"reduce must be 'max' or 'sum', got {reduce!r}")


class Naturalness(nn.Module):
    """``gamma * MMD(X_p, X_r)`` (paper Eq. 3-4), computed within fixed groups of ``group`` faces.

    The paper takes the MMD over the batch, which ties every face's result to its batch mates and
    the batch size. Here the faces are cut into groups (``labels``, by default consecutive runs of
    ``group``; ``ProtectionModule`` makes the groups independent of the batch size), each group
    gets its own MMD, and each face carries its group's term: ``forward`` returns one value per
    face, ``gamma * MMD(its group)``. Summed with the per-face identity losses this is the paper's
    objective times the batch size when the batch is one group.

    A group of one face (or ``views > 0``: the paper's single-image mode, Appendix B) compares
    the face through ``views`` randomly shifted/scaled copies of itself and of its original, the
    same random warp applied to both.
    """

    def __init__(self, gamma: float = 1.0, views: int = 0, kernel_mul: float = 2.0, kernel_num: int = 5, min_views: int = 8, group: int = 8):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if group < 1:
            raise ValueError(f"group (faces per MMD term) must be >= 1, got {group}")
        self.gamma, self.views, self.kernel_mul, self.kernel_num, self.min_views, self.group = gamma, views, kernel_mul, kernel_num, min_views, group

    def _views(self, x_p: torch.Tensor, x_r: torch.Tensor, v: int, rng) -> tuple[torch.Tensor, torch.Tensor]:
        from tipim.attack.transforms import affine_warp_grid, draw_affine

        b, _, h, w = x_p.shape
        angle, shift, scale = (p.flatten(0, 1).to(x_p.device) for p in draw_affine(rng, v, 5.0, 0.05, (0.95, 1.05)))
        grid = affine_warp_grid(angle, shift, scale, h, w, x_p.dtype, x_p.device)  # one grid, the same warp for both
        # warped apart: the originals' views (no gradient) are then left out of the backward. Each
        # face's v copies are a broadcast view for a lone face (no copy, forward or backward)
        p, r = (F.grid_sample(x[:, None].expand(-1, v, -1, -1, -1).flatten(0, 1), grid, mode="bilinear", padding_mode="border", align_corners=False)
                for x in (x_p, x_r))
        return p.reshape(b, v, -1), r.reshape(b, v, -1)

    def groups(self, b: int, labels: torch.Tensor | None = None, device: torch.device | str = "cpu") -> list[tuple[int, torch.Tensor, list[int]]]:
        """The faces' groups, one entry per group size ``n``: ``(n, idx, idx_list)``, idx (groups, n)
        on ``device`` the faces of each group. Made once per batch (``IdentityMaskAttack`` does,
        before its steps), so the step loop never waits for the device to read the labels."""
        labels = torch.arange(b) // self.group if labels is None else labels.cpu()
        _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        size = counts[inverse]  # each face's group size
        order = torch.argsort(inverse, stable=True)
        plan = [(n, order[size[order] == n].view(-1, n)) for n in sorted(set(size.tolist()))]
        return [(n, idx.to(device), idx.flatten().tolist()) for n, idx in plan]

    def forward(self, x_p: torch.Tensor, x_r: torch.Tensor, rng=None, labels: torch.Tensor | None = None,
                groups: list[tuple[int, torch.Tensor, list[int]]] | None = None) -> torch.Tensor:
        """(B,) each face's ``gamma * MMD`` of its group (``labels``: group id per face, or
        ``groups`` made by ``groups``)."""
        from tipim.attack.randomness import rng_for

        b = x_p.shape[0]
        out = x_p.new_zeros(b)
        if self.gamma == 0:
            return out
        if self.views > 0:
            p, r = self._views(x_p, x_r, self.views, rng_for(x_p, rng))
            return self.gamma * mmd(p, r, self.kernel_mul, self.kernel_num)
        for n, idx, members in groups if groups is not None else self.groups(b, labels, x_p.device):  # groups of one size are computed together
            if n == 1:
                views = max(self.views, self.min_views)
                if members == list(range(b)):  # every face alone (a lone photo): no gather and scatter
                    p, r = self._views(x_p, x_r, views, rng_for(x_p, rng))
                    return self.gamma * mmd(p, r, self.kernel_mul, self.kernel_num)
                one = idx[:, 0]
                p, r = self._views(x_p[one], x_r[one], views, rng_for(x_p, rng).subset(members))
                out = out.index_put((one,), self.gamma * mmd(p, r, self.kernel_mul, self.kernel_num))
                continue
            term = mmd(x_p[idx].flatten(2), x_r[idx].flatten(2), self.kernel_mul, self.kernel_num)  # (groups,)
            out = out.index_put((idx.flatten(),), (self.gamma * term).repeat_interleave(n))
        return out


class Objective(nn.Module):
    """TIP-IM's objective for a step, summed over faces: ``D(x_p, x_t) - away * D(x_p, x_r)``
    plus ``gamma * MMD`` (``Naturalness``), with an ensemble's members optionally balanced
    (``MemberBalance``). Given one surrogate pass, it gives the value per face and the gradient
    with respect to the mask variable, for one target per face or for many targets at once.

    One forward pass serves every target: the loss is linear in the normalised embedding ``n``
    (``D(n, t) - D(n, r) = 2 n.(r - t) + const``), so the per-target gradients are
    vector-Jacobian products through one graph (``grad_mode='loop'``) or one batched product
    (``'batched'``). A sum over faces, not a mean, so a face's gradient is batch-size free.

    Args:
        naturalness: the ``gamma * MMD`` term, or None.
        metric: identity distance, ``l2`` (squared, normalised) or ``cosine``.
        away: weight of ``D(x_p, x_r)`` (1 = the paper; see ``relative_identity_loss``).
        balance: how an ensemble's members share each gradient, or None (the plain sum).
        grad_mode: ``loop`` or ``batched`` per-target products.
    """

    def __init__(self, naturalness: Naturalness | None = None, metric: str = "l2", away: float = 1.0, balance: nn.Module | None = None,
                 grad_mode: str = "loop"):
        super().__init__()
        if away < 0:
            raise ValueError(f"away must be >= 0, got {away}")
        if grad_mode not in ("loop", "batched"):
            raise ValueError(f"grad_mode must be 'loop' or 'batched', got {grad_mode!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.naturalness, self.metric, self.away, self.balance, self.grad_mode = naturalness, metric, away, balance, grad_mode

    @property
    def natural_on(self) -> bool:
        return self.naturalness is not None and self.naturalness.gamma > 0

    def identity(self, n: torch.Tensor, targets: torch.Tensor, n_r: torch.Tensor) -> torch.Tensor:
        """The identity term per face (broadcasting): ``D(n, t) - away * D(n, n_r)``."""
        return relative_identity_loss(n, targets, n_r, self.metric, self.away)

    def value(self, n: torch.Tensor, targets: torch.Tensor, n_r: torch.Tensor, natural: torch.Tensor | None) -> torch.Tensor:
        """The whole objective per face, ``natural`` its ``Naturalness`` term (or None)."""
        identity = self.identity(n, targets, n_r)
        return identity + natural if natural is not None else identity

    def _cotangents(self, e: torch.Tensor, n_r, t_emb, which: torch.Tensor | None) -> torch.Tensor:
        """d(sum_b L_b)/d embedding at ``e`` (B, D): (K, B, D) for every target, or (B, D) for
        target ``which`` per image (the loss is cheap: K small gradients, no network)."""
        leaf = e.requires_grad_(True)
        if which is None:
            losses = self.identity(leaf[:, None], t_emb[None], n_r[:, None]).sum(0)  # (K,)
            return torch.stack([torch.autograd.grad(losses[k], leaf, retain_graph=True)[0] for k in range(len(t_emb))])
        return torch.autograd.grad(self.identity(leaf, t_emb[which], n_r).sum(), leaf)[0]

    def _vjp(self, out: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``v . d out / d x`` for one (B, D) or several (K, B, D) cotangents ``v``."""
        if v.dim() == out.dim():
            return torch.autograd.grad(out, x, grad_outputs=v, retain_graph=True)[0]
        if self.grad_mode == "batched":
            return torch.autograd.grad(out, x, grad_outputs=v, is_grads_batched=True, retain_graph=True)[0]
        return torch.stack([torch.autograd.grad(out, x, grad_outputs=v[k], retain_graph=True)[0] for k in range(len(v))])

    def _balanced_grads(self, x, parts, n_r, t_emb, which: torch.Tensor | None) -> torch.Tensor:
        """``identity_grads`` with each member's gradient taken through its own graph and the
        members combined by ``self.balance`` from their own margins."""
        sizes = [p.shape[-1] for p in parts]
        leaf = torch.cat(parts, -1).detach()
        v = self._cotangents(leaf, n_r, t_emb, which)
        tgt = t_emb[:, None].expand(-1, len(x), -1) if which is None else t_emb[which]
        with torch.no_grad():  # per member: D_m(x, x_t) - D_m(x, x_r), (B,) or (K, B)
            blocks = zip(leaf.split(sizes, -1), tgt.split(sizes, -1), n_r.split(sizes, -1))
            margins = torch.stack([self.identity(e, t, r) for e, t, r in blocks], -1)
        grads = [self._vjp(p, x, v_m.contiguous()) for p, v_m in zip(parts, v.split(sizes, -1))]
        g = self.balance.combine(grads, margins, batch_dims=1 if which is not None else 2)
        return g if which is not None else g.transpose(0, 1)

    def identity_grads(self, x, n, n_r, t_emb, which: torch.Tensor | None, parts=None) -> torch.Tensor:
        """Gradients w.r.t. ``x`` of the identity term, for every target (which=None:
        (B, K, C, H, W)) or for one target per image (which: (B,) -> (B, C, H, W)); ``parts``: the
        members' blocks of ``n`` when they are balanced, else None."""
        if parts is not None:
            return self._balanced_grads(x, parts, n_r, t_emb, which)
        g = self._vjp(n, x, self._cotangents(n.detach(), n_r, t_emb, which))
        return g if which is not None else g.transpose(0, 1)

    def gradient(self, x, n, n_r, t_emb, which: torch.Tensor, parts=None, natural: torch.Tensor | None = None) -> torch.Tensor:
        """The gradient of the whole objective, target ``which`` per face, in one backward pass
        (the view and the transform are walked once, not twice)."""
        if parts is not None or natural is None:
            grad = self.identity_grads(x, n, n_r, t_emb, which, parts)
            return grad + torch.autograd.grad(natural.sum(), x)[0] if natural is not None else grad
        v = self._cotangents(n.detach(), n_r, t_emb, which)
        total = natural.sum()
        return torch.autograd.grad([n, total], x, grad_outputs=[v, torch.ones_like(total)])[0]

    def candidate_gradients(self, x, n, n_r, t_emb, candidates: torch.Tensor | None, parts=None, natural: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, ...) the gradient of the whole objective towards each candidate target
        (``candidates`` (B, C) target indices, or None: all K), from one surrogate pass."""
        natural_grad = torch.autograd.grad(natural.sum(), x, retain_graph=True)[0] if natural is not None else 0.0
        if candidates is None:
            grads = self.identity_grads(x, n, n_r, t_emb, None, parts)
        else:
            grads = torch.stack([self.identity_grads(x, n, n_r, t_emb, candidates[:, j], parts) for j in range(candidates.shape[1])], 1)
        return grads + (natural_grad[:, None] if natural is not None else 0.0)

    def estimate(self, x, x_cand, grads, n, n_r, t_emb, candidates: torch.Tensor | None) -> torch.Tensor:
        """(B, C) a first-order estimate of the identity term after each candidate step: its value
        now (the gradient pass's embedding) plus gradient . step; no network pass."""
        targets = t_emb[None].expand(len(x), -1, -1) if candidates is None else t_emb[candidates]
        now = self.identity(n[:, None], targets, n_r[:, None])
        change = (grads * (x_cand - x[:, None])).flatten(2).sum(-1)
        return now + change


__all__ = ["Naturalness", "Objective", "gain", "gaussian_kernel", "identity_distance", "mmd", "relative_identity_loss"]
