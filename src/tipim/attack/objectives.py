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
    z = torch.cat([x, y], dim=-2)
    n = z.shape[-2]
    # |a|^2 + |b|^2 - 2 a.b from one matrix product per set: faster than cdist's direct loop on a
    # few dozen rows, and a set's sums do not depend on how many sets are computed with it. The
    # norms are the product's diagonal, so a row's distance to itself is exactly 0. Computed
    # outside autocast: the distances cancel norms of ~1e4 down to ~1, below half precision.
    with torch.autocast(z.device.type, enabled=False):
        z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
        flat = z.reshape(-1, n, z.shape[-1])
        gram = torch.stack([m @ m.T for m in flat]).view(*z.shape[:-1], n) if len(flat) else z.new_zeros(*z.shape[:-1], n)
    sq = gram.diagonal(dim1=-2, dim2=-1)
    d2 = (sq[..., :, None] + sq[..., None, :] - 2 * gram).clamp_min(0)
    bandwidth = (d2.detach().sum(dim=(-2, -1), keepdim=True) / max(n * n - n, 1)).clamp_min(1e-12)
    bandwidth = bandwidth / kernel_mul ** (kernel_num // 2)
    return sum(torch.exp(-d2 / (bandwidth * kernel_mul**i)) for i in range(kernel_num))


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
        from tipim.attack.transforms import affine_warp, draw_affine

        b = x_p.shape[0]
        angle, shift, scale = (p.flatten(0, 1).to(x_p.device) for p in draw_affine(rng, v, 5.0, 0.05, (0.95, 1.05)))
        # warped apart: the originals' views (no gradient) are then left out of the backward
        p = affine_warp(x_p.repeat_interleave(v, dim=0), angle, shift, scale)
        r = affine_warp(x_r.repeat_interleave(v, dim=0), angle, shift, scale)
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
                one = idx[:, 0]
                p, r = self._views(x_p[one], x_r[one], max(self.views, self.min_views), rng_for(x_p, rng).subset(members))
                out = out.index_put((one,), self.gamma * mmd(p, r, self.kernel_mul, self.kernel_num))
                continue
            term = mmd(x_p[idx].flatten(2), x_r[idx].flatten(2), self.kernel_mul, self.kernel_num)  # (groups,)
            out = out.index_put((idx.flatten(),), (self.gamma * term).repeat_interleave(n))
        return out


__all__ = ["Naturalness", "gain", "gaussian_kernel", "identity_distance", "mmd", "relative_identity_loss"]
