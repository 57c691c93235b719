"""Input diversity: random, differentiable transforms applied before the surrogate so that the
mask does not over-fit it (DIM, Xie et al. 2019), and the posting transform for robustness.

Every random choice is made per image from its own stream (``PerImageRandom``), so an image is
transformed the same way whatever batch it is in. Each transform is called as ``t(x, rng)``;
without ``rng`` the streams are seeded from torch's global generator.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import kornia.filters
import torch
import torch.nn.functional as F
from torch import nn

from tipim.attack.jpeg import jpeg_round_trip, linear_resize_matrix
from tipim.attack.randomness import PerImageRandom, rng_for, to_device


def affine_warp(x: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Rotate by ``angle`` degrees about the centre, scale, then shift by ``shift`` (fractions of
    the width/height), per image: ``angle`` and ``scale`` (N,), ``shift`` (N, 2); bilinear."""
    grid = affine_warp_grid(angle, shift, scale, x.shape[-2], x.shape[-1], x.dtype, x.device)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def affine_warp_grid(angle: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, h: int, w: int, dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:
    """``affine_warp``'s sampling grid (N, h, w, 2), for warping several images the same way."""
    a = torch.deg2rad(angle.to(dtype))
    cos, sin, s = torch.cos(a), torch.sin(a), scale.to(dtype)
    # output -> input in pixel-centred coordinates, then in affine_grid's [-1, 1] units
    aspect = h / w
    theta = torch.zeros(len(angle), 2, 3, dtype=dtype, device=device)
    theta[:, 0, 0], theta[:, 0, 1] = cos / s, sin / s * aspect
    theta[:, 1, 0], theta[:, 1, 1] = -sin / s / aspect, cos / s
    t = 2 * shift.to(dtype)
    theta[:, :, 2] = -(theta[:, :, :2] @ t[:, :, None])[..., 0]
    return affine_grid(theta, h, w)


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, (N, C, h, w), align_corners=False)`` by broadcasting: on the CPU its
    batched product with an inner size of 3 took longer than the ``grid_sample`` it feeds. Equal
    up to float rounding (tested)."""
    xs = ((torch.arange(w, dtype=theta.dtype, device=theta.device) * 2 + 1) / w - 1).view(1, 1, w)
    ys = ((torch.arange(h, dtype=theta.dtype, device=theta.device) * 2 + 1) / h - 1).view(1, h, 1)
    t = theta[:, :, :, None, None]  # (N, 2, 3, 1, 1)
    return torch.stack([t[:, i, 0] * xs + t[:, i, 1] * ys + t[:, i, 2] for i in (0, 1)], -1)


class ResizePad(nn.Module):
    """DIM: with probability ``prob``, shrink to a random size in [S, S * rate) of a canvas
    S * rate wide, place it at a random spot (zeros around), and resize back to S; done per image
    as one bilinear warp."""

    def __init__(self, prob: float = 0.5, rate: float = 1.1):
        super().__init__()
        self.prob, self.rate = prob, rate

    def forward(self, x: torch.Tensor, rng: PerImageRandom | None = None) -> torch.Tensor:
        drawn = rng_for(x, rng).rand(4, dtype=torch.float64, device="cpu")
        u = drawn.to(x.device)
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
        warp = lambda: F.grid_sample(x, affine_grid(theta, x.shape[-2], x.shape[-1]), mode="bilinear", padding_mode="zeros", align_corners=False)  # noqa: E731
        return chosen(drawn[:, 0] < self.prob, warp, x)


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
        keep = rng.rand(1, dtype=torch.float64, device="cpu")[:, 0] < self.prob
        angle, shift, scale = (p[:, 0].to(x.device) for p in draw_affine(rng, 1, self.degrees, self.translate, self.scale))
        return chosen(keep, lambda: affine_warp(x, angle, shift, scale), x)


class PostingTransform(nn.Module):
    """What a photo goes through after it is posted, for expectation over transformation (the
    robust option): per image, a random shift of a few pixels, a random down-and-up resize, and a
    differentiable JPEG round trip (``jpeg_round_trip``, kornia's codec) at a random quality. ``base`` (e.g. RandomAffine)
    runs first, so the method's own input diversity is kept.

    Args:
        quality: JPEG quality range, drawn uniformly per image. The default reaches below the
            JPEG 75 that platforms use: on 40-px faces after JPEG 75 the weakest unseen recogniser
            misses 88% of them, against 80% with qualities 50-95 (results/photo_transfer, posting_jpeg).
        jpeg_prob: share of images that go through JPEG at each step.
        scale: range of the down-scale factor before resizing back (1 = no resize).
        shift: largest shift in pixels (each axis).
        blur: range of a Gaussian blur's sigma in crop pixels, drawn per image after the resize
            (an attacker's smoothing, see tipim.evaluation.purify); (0, 0) = off, and then nothing else is drawn.
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
        rng = rng_for(x, rng)
        if self.base is not None:
            x = self.base(x, rng)
        b, _, h, w = x.shape
        # drawn and turned into sizes on the CPU: no per-face read-back from a GPU
        u = rng.rand(5, dtype=torch.float64, device="cpu")  # shift x, shift y, resize factor, quality, JPEG or not
        shift = ((u[:, :2] * (2 * self.shift + 1)).floor() - self.shift).long().tolist() if self.shift > 0 else [[0, 0]] * b
        f = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 2]
        side = [(max(8, round(h * v)), max(8, round(w * v))) if v < 0.99 else None for v in f.tolist()]
        if any(s is not None for s in side) or any(dx or dy for dx, dy in shift):
            x = down_up(x, side, [(dy, dx) for dx, dy in shift])
        if self.blur[1] > 0:  # drawn only when on, so that with blur off the other draws are what they are without it
            sigma = self.blur[0] + (self.blur[1] - self.blur[0]) * rng.rand(1, dtype=torch.float64, device="cpu")[:, 0]
            x = torch.cat([_gaussian_blur(x[i : i + 1], float(s)) for i, s in enumerate(sigma.tolist())])
        q = to_device((self.quality[0] + (self.quality[1] - self.quality[0]) * u[:, 3]).to(x.dtype), x.device)
        return chosen(u[:, 4] < self.jpeg_prob, lambda: jpeg_round_trip(x.clamp(0, 1), q), x)


def chosen(keep: torch.Tensor, changed: Callable[[], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``torch.where(keep, changed(), x)`` per image, ``keep`` (B,) a CPU mask drawn from the images'
    streams: ``changed`` is not computed when no image takes it, and no select runs when every
    image does (a lone face always): on the CPU the select and its backward cost about as much as
    a small convolution. The same values and gradients either way."""
    if not bool(keep.any()):
        return x
    y = changed()
    return y if bool(keep.all()) else torch.where(to_device(keep, x.device).view(-1, *[1] * (x.dim() - 1)), y, x)


def down_up(x: torch.Tensor, sizes: list[tuple[int, int] | None], shifts: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """Each image shifted by ``shifts[i]`` whole pixels (rows, columns; border pixels repeated),
    then resized to its own ``sizes[i]`` (h, w) and back, or left that size where ``None``:
    kornia's ``resize(..., antialias=True)`` down (a Gaussian, then bilinear) and bilinear up.
    One pair of batched matrix products instead of a warp and two resizes per distinct size, which
    on a GPU are hundreds of small kernels per step. Equal to kornia's resizes up to float rounding
    (tested)."""
    _, _, h, w = x.shape
    shifts = shifts or [(0, 0)] * len(sizes)
    shrinks = [s is not None and (h / s[0] > 1 or w / s[1] > 1) for s in sizes]  # kornia blurs both axes if either shrinks
    rows = torch.stack([_axis_matrix(h, s and s[0], a, d[0], x.device, x.dtype) for s, a, d in zip(sizes, shrinks, shifts)])
    cols = torch.stack([_axis_matrix(w, s and s[1], a, d[1], x.device, x.dtype) for s, a, d in zip(sizes, shrinks, shifts)])
    return rows[:, None] @ x @ cols[:, None].transpose(-1, -2)


@functools.lru_cache(maxsize=4096)
def _axis_matrix(n: int, small: int | None, antialias: bool, shift: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One axis's matrix in the images' device and dtype, made once per size and shift (no copy per step)."""
    m = torch.eye(n, dtype=torch.float64) if small is None else _down_up_matrix(n, small, antialias)
    if shift:
        m = m @ torch.eye(n, dtype=torch.float64)[(torch.arange(n) - shift).clamp(0, n - 1)]  # row i reads input i - shift
    return m.to(device, dtype)


def _down_up_matrix(n: int, small: int, antialias: bool) -> torch.Tensor:
    """(n, n): along one axis, kornia's Gaussian (sigma (factor - 1) / 2, at least 0.001; reflected
    borders), bilinear down to ``small`` and bilinear back up to ``n``."""
    blur = torch.eye(n, dtype=torch.float64)
    if antialias:
        sigma = max((n / small - 1.0) / 2.0, 0.001)
        ks = int(max(2.0 * 2 * sigma, 3))
        ks = ks if ks % 2 else ks + 1
        if n > 1:
            r = ks // 2
            taps = torch.arange(-r, r + 1, dtype=torch.float64)
            weight = torch.exp(-(taps**2) / (2 * sigma**2))
            weight = weight / weight.sum()
            cols = torch.arange(n)[:, None] + torch.arange(-r, r + 1)[None]
            cols = torch.where(cols < 0, -cols, torch.where(cols > n - 1, 2 * (n - 1) - cols, cols))  # reflect
            blur = torch.zeros(n, n, dtype=torch.float64).scatter_add_(1, cols, weight.expand(n, -1).contiguous())
    return linear_resize_matrix(small, n) @ linear_resize_matrix(n, small) @ blur


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma < 0.1:
        return x
    k = 2 * math.ceil(3 * sigma) + 1
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")


__all__ = ["PostingTransform", "RandomAffine", "ResizePad", "affine_grid", "affine_warp", "affine_warp_grid", "draw_affine"]
