"""The update: MI-FGSM momentum on per-image normalised gradients, then projection."""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("linf", "l2")


def project(x: torch.Tensor, x_r: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """Onto the eps-ball around ``x_r`` (L-inf box or L2 ball, per image), then onto [0, 1]."""
    delta = x - x_r
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    elif norm == "l2":
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        delta = delta * (eps / n).clamp(max=1.0)
    else:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return (x_r + delta).clamp(0.0, 1.0)


def quantise_within(x: torch.Tensor, x_r: torch.Tensor, eps: float) -> torch.Tensor:
    """8-bit pixels of ``x`` that keep |x - x_r| <= eps *in 8-bit units* (x_r is 8-bit already).

    Returns uint8 (B, C, H, W). Rounding alone can overshoot by one level; the clamp is done on
    integers, so the bound written to disk is exact.
    """
    r8 = (x_r * 255.0).round()
    levels = float(int(eps * 255.0 + 1e-6))
    q = (x * 255.0).round()
    q = torch.minimum(torch.maximum(q, r8 - levels), r8 + levels).clamp(0, 255)
    return q.to(torch.uint8)


def smooth_gradient(grad: torch.Tensor, size: int, sigma: float | None = None) -> torch.Tensor:
    """TI-FGSM's translation-invariant gradient (Dong et al., CVPR 2019): ``grad`` (..., C, H, W)
    convolved per channel with a normalised ``size`` x ``size`` Gaussian (zero padding, as TI), so
    the step favours masks that still work when the face shifts by a few pixels, which is what a
    recogniser that re-detects and re-aligns the face does. ``sigma`` defaults to ``size / 4``."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"smoothing kernel size must be odd and >= 1, got {size}")
    if size == 1:
        return grad
    if grad.dim() < 3:
        raise ValueError(f"smooth_gradient needs (..., C, H, W), got shape {tuple(grad.shape)}")
    sigma = size / 4 if sigma is None else sigma
    r = torch.arange(size, dtype=grad.dtype, device=grad.device) - size // 2
    k1 = torch.exp(-(r**2) / (2 * sigma**2))
    k = torch.outer(k1, k1)
    k = k / k.sum()
    c, h, w = grad.shape[-3:]
    flat = grad.reshape(-1, c, h, w)
    out = torch.nn.functional.conv2d(flat, k.expand(c, 1, size, size), padding=size // 2, groups=c)
    return out.reshape(grad.shape)


class MomentumStep(nn.Module):
    """``g <- mu * g + grad / ||grad||_1`` per image, then a descent step: ``alpha * sign(g)``
    for L-inf or ``alpha * g / ||g||_2`` for L2, then ``project``. ``mu = 0`` is plain PGD/I-FGSM.

    ``step_size``: ``"paper"`` (1.5/255, the paper's text), ``"official"`` (1.5 * eps / T, the
    official code), or a number in [0, 1] pixel units. ``smooth``: odd Gaussian kernel size for
    ``smooth_gradient`` (TI), in the mask's pixels; 0 = off (the paper).
    """

    def __init__(self, eps: float = 12 / 255, steps: int = 50, step_size: str | float = "paper", momentum: float = 1.0, norm: str = "linf",
                 smooth: int = 0):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0 < eps <= 1:
            raise ValueError(f"eps is in [0, 1] pixel units (12/255 = {12 / 255:.4f}), got {eps}")
        if smooth < 0 or (smooth > 0 and smooth % 2 == 0):
            raise ValueError(f"smooth is an odd Gaussian kernel size (e.g. 3, 5, 7) or 0 for off, got {smooth}")
        self.eps, self.steps, self.momentum, self.norm, self.smooth = eps, steps, momentum, norm, smooth
        if step_size == "paper":
            self.alpha = 1.5 / 255
        elif step_size == "official":
            self.alpha = 1.5 * eps / steps
        else:
            self.alpha = float(step_size)

    @staticmethod
    def _per_image(v: torch.Tensor, p: float) -> torch.Tensor:
        return v.flatten(-3).norm(p=p, dim=-1).clamp_min(1e-12)[..., None, None, None]

    def accumulate(self, g: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """New momentum for a gradient of shape (..., C, H, W)."""
        if self.smooth > 1:
            grad = smooth_gradient(grad, self.smooth)
        return self.momentum * g + grad / self._per_image(grad, 1)

    def update(self, x: torch.Tensor, x_r: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            x = x - self.alpha * g.sign()
        else:
            x = x - self.alpha * g / self._per_image(g, 2)
        shape = x.shape
        return project(x.reshape(-1, *shape[-3:]), x_r.expand(shape).reshape(-1, *shape[-3:]), self.eps, self.norm).reshape(shape)


__all__ = ["MomentumStep", "project", "quantise_within", "smooth_gradient"]
