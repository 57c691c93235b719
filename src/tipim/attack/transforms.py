"""Input diversity: random, differentiable transforms applied before the surrogate so that the
mask does not over-fit it (DIM, Xie et al. 2019), and the posting transform for robustness.

Every random choice is made per image from its own stream (``PerImageRandom``), so an image is
transformed the same way whatever batch it is in. Each transform is called as ``t(x, rng)``;
without ``rng`` the streams are seeded from torch's global generator.
"""

from __future__ import annotations

import math

import kornia.filters
import kornia.geometry.transform as KT
import torch
import torch.nn.functional as F
from torch import nn

from tipim.attack.randomness import PerImageRandom, rng_for, to_device


def affine_warp(x: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Rotate by ``angle`` degrees about the centre, scale, then shift by ``shift`` (fractions of
    the width/height), per image: ``angle`` and ``scale`` (N,), ``shift`` (N, 2); bilinear."""
    n, _, h, w = x.shape
    a = torch.deg2rad(angle.to(x.dtype))
    cos, sin, s = torch.cos(a), torch.sin(a), scale.to(x.dtype)
    # output -> input in pixel-centred coordinates, then in affine_grid's [-1, 1] units
    aspect = h / w
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos / s, sin / s * aspect
    theta[:, 1, 0], theta[:, 1, 1] = -sin / s / aspect, cos / s
    t = 2 * shift.to(x.dtype)
    theta[:, :, 2] = -(theta[:, :, :2] @ t[:, :, None])[..., 0]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


class ResizePad(nn.Module):
    """DIM: with probability ``prob``, shrink to a random size in [S, S * rate) of a canvas
    S * rate wide, place it at a random spot (zeros around), and resize back to S; done per image
    as one bilinear warp."""

    def __init__(self, prob: float = 0.5, rate: float = 1.1):
        super().__init__()
        self.prob, self.rate = prob, rate

    def forward(self, x: torch.Tensor, rng: PerImageRandom | None = None) -> torch.Tensor:
        u = rng_for(x, rng).rand(4, dtype=torch.float64).to(x.device)
        s = x.shape[-1]
        big = int(s * self.rate)
        rnd = s + (u[:, 1] * (big - s)).floor()  # as torch.randint(s, big)
        room = big - rnd + 1
        top, left = (u[:, 2] * room).floor(), (u[:, 3] * room).floor()
        a = big / rnd
        theta = torch.zeros(len(x), 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = a.to(x.dtype)
        theta[:, 0, 2] = (a - 1 - 2 * left / rnd).to(x.dtype)
        theta[:, 1, 2] = (a - 1 - 2 * top / rnd).to(x.dtype)
        y = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), mode="bilinear", padding_mode="zeros", align_corners=False)
        keep = (u[:, 0] < self.prob).view(-1, 1, 1, 1)
        return torch.where(keep, y, x)


def draw_affine(rng: PerImageRandom, views: int, degrees: float, translate: float, scale: tuple[float, float]) -> tuple[torch.Tensor, ...]:
    """``views`` random affine parameters per image: angle (B, v), shift (B, v, 2), scale (B, v)."""
    u = rng.rand(views, 4, dtype=torch.float64)
    angle = (2 * u[..., 0] - 1) * degrees
    shift = (2 * u[..., 1:3] - 1) * translate
    return angle, shift, scale[0] + (scale[1] - scale[0]) * u[..., 3]


class RandomAffine(nn.Module):
    """With probability ``prob``, a small random rotation/shift/scale per image (border padding),
    the kind the official TIP-IM code applies before its surrogates."""

    def __init__(self, degrees: float = 10.0, translate: float = 0.05, scale: tuple[float, float] = (0.95, 1.05), prob: float = 0.7):
        super().__init__()
        self.degrees, self.translate, self.scale, self.prob = degrees, translate, tuple(scale), prob

    def forward(self, x: torch.Tensor, rng: PerImageRandom | None = None) -> torch.Tensor:
        rng = rng_for(x, rng)
        keep = (rng.rand(1, dtype=torch.float64)[:, 0] < self.prob).to(x.device).view(-1, 1, 1, 1)
        angle, shift, scale = (p[:, 0].to(x.device) for p in draw_affine(rng, 1, self.degrees, self.translate, self.scale))
        return torch.where(keep, affine_warp(x, angle, shift, scale), x)


class PostingTransform(nn.Module):
    """What a photo goes through after it is posted, for expectation over transformation (the
    robust option): per image, a random shift of a few pixels, a random down-and-up resize, and a
    differentiable JPEG round trip (kornia) at a random quality. ``base`` (e.g. RandomAffine)
    runs first, so the method's own input diversity is kept.

    Args:
        quality: JPEG quality range, drawn uniformly per image. The default reaches below the
            JPEG 75 that platforms use: on 40-px faces after JPEG 75 it lifted the weakest unseen
            recogniser from 80 to 88% at the same mean (results/photo_transfer, session 10; it was 50-95).
        jpeg_prob: share of images that go through JPEG at each step (was 0.9).
        scale: range of the down-scale factor before resizing back (1 = no resize).
        shift: largest shift in pixels (each axis).
        blur: range of a Gaussian blur's sigma in crop pixels, drawn per image after the resize
            (an attacker's smoothing, issue 24); (0, 0) = off, and then nothing else is drawn.
    """

    def __init__(
        self,
        quality: tuple[float, float] = (30.0, 90.0),
        jpeg_prob: float = 1.0,
        scale: tuple[float, float] = (0.6, 1.0),
        shift: int = 3,
        base: nn.Module | None = None,
        blur: tuple[float, float] = (0.0, 0.0),
    ):
        super().__init__()
        if not 1 <= quality[0] <= quality[1] <= 100:
            raise ValueError(f"quality must be a range inside [1, 100], got {quality}")
        if not 0 <= blur[0] <= blur[1]:
            raise ValueError(f"blur is a sigma range (low, high) with 0 <= low <= high, got {blur}")
        self.quality, self.jpeg_prob, self.scale, self.shift, self.base = quality, jpeg_prob, scale, shift, base
        self.blur = (float(blur[0]), float(blur[1]))

    def forward(self, x: torch.Tensor, rng: PerImageRandom | None = None) -> torch.Tensor:
        from kornia.enhance import jpeg_codec_differentiable

        rng = rng_for(x, rng)
        if self.base is not None:
            x = self.base(x, rng)
        b, _, h, w = x.shape
        # drawn and turned into sizes on the CPU: no per-face read-back from a GPU
        u = rng.rand(5, dtype=torch.float64, device="cpu")  # shift x, shift y, resize factor, quality, JPEG or not
        if self.shift > 0:
            t = to_device(((u[:, :2] * (2 * self.shift + 1)).floor() - self.shift).to(x.dtype), x.device)
            m = torch.eye(2, 3, device=x.device, dtype=x.dtype).repeat(b, 1, 1)
            m[:, :, 2] = t
            x = KT.warp_affine(x, m, (h, w), padding_mode="border", align_corners=True)
        f = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 2]
        side = [(max(8, round(h * v)), max(8, round(w * v))) if v < 0.99 else None for v in f.tolist()]
        parts = []
        for size in sorted({s for s in side if s is not None}):  # one down-and-up resize per size
            idx = to_device(torch.tensor([i for i, s in enumerate(side) if s == size]), x.device)
            small = KT.resize(x[idx], size, interpolation="bilinear", antialias=True)
            parts.append((idx, KT.resize(small, (h, w), interpolation="bilinear")))
        if parts:
            x = x.index_put((torch.cat([i for i, _ in parts]),), torch.cat([p for _, p in parts]))
        if self.blur[1] > 0:  # drawn only when on: the default's random streams stay as they were
            sigma = self.blur[0] + (self.blur[1] - self.blur[0]) * rng.rand(1, dtype=torch.float64, device="cpu")[:, 0]
            x = torch.cat([_gaussian_blur(x[i : i + 1], float(s)) for i, s in enumerate(sigma.tolist())])
        q = to_device((self.quality[0] + (self.quality[1] - self.quality[0]) * u[:, 3]).to(x.dtype), x.device)
        y = jpeg_codec_differentiable(x.clamp(0, 1), q)
        keep = to_device(u[:, 4] < self.jpeg_prob, x.device).view(b, 1, 1, 1)
        return torch.where(keep, y, x)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma < 0.1:
        return x
    k = 2 * math.ceil(3 * sigma) + 1
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")


__all__ = ["PostingTransform", "RandomAffine", "ResizePad", "affine_warp", "draw_affine"]
