"""Ensembles in which every member is fooled.

With the plain summed objective the sign step follows whichever member has the largest input
gradient, and the objective is won on the members that are easiest to move: measured on the LFW
protocol, leave-one-out ensembles fooled facenet and dlib-resnet *as members* only 34-63% of
the time (results/reproduce/ensemble). ``MemberBalance`` reweights each member's gradient per
image before they are summed.
"""

from __future__ import annotations

import torch
from torch import nn


def member_weights(margins: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """Per-member weights from ``margins`` (..., M) = ``D_m(x, x_t) - D_m(x, x_r)`` (positive:
    member m still prefers the true identity), mean 1 over members. ``temperature``: the weights
    are ``M * softmax(margins / temperature)``, i.e. the gradient of the smooth worst-member
    objective ``temperature * logsumexp_m(L_m / temperature)``; None: equal weights."""
    if temperature is None:
        return torch.ones_like(margins)
    return margins.shape[-1] * torch.softmax(margins / temperature, dim=-1)


def _mean_abs(g: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """mean|g| per image, shaped to broadcast against ``g``."""
    return g.abs().flatten(batch_dims).mean(-1).clamp_min(1e-12).view(*g.shape[:batch_dims], *[1] * (g.dim() - batch_dims))


def normalise_per_image(g: torch.Tensor, batch_dims: int = 1) -> torch.Tensor:
    """``g / mean|g|`` per image (the first ``batch_dims`` dims index images)."""
    return g / _mean_abs(g, batch_dims)


class MemberBalance(nn.Module):
    """How an ensemble's members share each step.

    Args:
        normalise: scale each member's input gradient to unit mean magnitude per image before
            summing, so no member wins the sign step by the size of its gradient alone (the
            ensemble's own weights then no longer scale the gradients; ``temperature`` does).
            The combined gradient keeps the plain sum's size per image, so the naturalness
            term's ``gamma`` keeps its meaning.
        temperature: > 0: favour the member that is least fooled, per image (smooth worst-member
            objective; smaller = closer to the pure worst member); None: equal weights.
    """

    def __init__(self, normalise: bool = True, temperature: float | None = 0.1):
        super().__init__()
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be > 0 or None, got {temperature}")
        self.normalise, self.temperature = normalise, temperature

    def combine(self, grads: list[torch.Tensor], margins: torch.Tensor, batch_dims: int = 1) -> torch.Tensor:
        """One gradient from the members' ``grads`` (M tensors shaped like the images, with
        ``batch_dims`` leading image dims) and their ``margins`` (those dims, M)."""
        if len(grads) != margins.shape[-1]:
            raise ValueError(f"{len(grads)} member gradients but {margins.shape[-1]} margins")
        w = member_weights(margins, self.temperature)
        out = 0.0
        for m, g in enumerate(grads):
            g = normalise_per_image(g, batch_dims) if self.normalise else g
            out = out + w[..., m].reshape(*w.shape[:-1], *[1] * (g.dim() - batch_dims)) * g
        # keep the plain sum's magnitude per image, so gamma weighs naturalness as before
        return out * (_mean_abs(sum(grads), batch_dims) / _mean_abs(out, batch_dims))


__all__ = ["MemberBalance", "member_weights", "normalise_per_image"]
