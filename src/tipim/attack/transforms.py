"""Input diversity: random, differentiable transforms applied before the surrogate so that the
mask does not over-fit it (DIM, Xie et al. 2019). Randomness comes from torch's global generator,
which the Lightning module seeds per batch."""

from __future__ import annotations

import kornia.geometry.transform as KT
import torch
import torch.nn.functional as F
from torch import nn


class ResizePad(nn.Module):
    """DIM: with probability ``prob``, resize to a random size in [S, S * rate), pad at a random
    place to S * rate, and resize back to S (the embedders need S = 112)."""

    def __init__(self, prob: float = 0.5, rate: float = 1.1):
        super().__init__()
        self.prob, self.rate = prob, rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.prob:
            return x
        s = x.shape[-1]
        big = int(s * self.rate)
        rnd = int(torch.randint(s, big, ()))
        y = KT.resize(x, (rnd, rnd), interpolation="nearest")
        top = int(torch.randint(0, big - rnd + 1, ()))
        left = int(torch.randint(0, big - rnd + 1, ()))
        y = F.pad(y, (left, big - rnd - left, top, big - rnd - top))
        return KT.resize(y, (s, s), interpolation="bilinear", align_corners=False)


class RandomAffine(nn.Module):
    """A small random rotation/shift/scale per image (kornia), the kind the official TIP-IM code
    applies before its surrogates."""

    def __init__(self, degrees: float = 10.0, translate: float = 0.05, scale: tuple[float, float] = (0.95, 1.05), prob: float = 0.7):
        super().__init__()
        import kornia.augmentation as K

        self.aug = K.RandomAffine(degrees=degrees, translate=(translate, translate), scale=scale, p=prob, padding_mode="border")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aug(x)


class PostingTransform(nn.Module):
    """What a photo goes through after it is posted, for expectation over transformation (the
    robust option): per image, a random shift of a few pixels, a random down-and-up resize, and a
    differentiable JPEG round trip (kornia) at a random quality. ``base`` (e.g. RandomAffine)
    runs first, so the method's own input diversity is kept.

    Args:
        quality: JPEG quality range, drawn uniformly per image.
        jpeg_prob: share of images that go through JPEG at each step.
        scale: range of the down-scale factor before resizing back (1 = no resize).
        shift: largest shift in pixels (each axis).
    """

    def __init__(
        self,
        quality: tuple[float, float] = (50.0, 95.0),
        jpeg_prob: float = 0.9,
        scale: tuple[float, float] = (0.6, 1.0),
        shift: int = 3,
        base: nn.Module | None = None,
    ):
        super().__init__()
        if not 1 <= quality[0] <= quality[1] <= 100:
            raise ValueError(f"quality must be a range inside [1, 100], got {quality}")
        self.quality, self.jpeg_prob, self.scale, self.shift, self.base = quality, jpeg_prob, scale, shift, base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from kornia.enhance import jpeg_codec_differentiable

        if self.base is not None:
            x = self.base(x)
        b, _, h, w = x.shape
        if self.shift > 0:
            t = torch.randint(-self.shift, self.shift + 1, (b, 2), device=x.device).to(x.dtype)
            m = torch.eye(2, 3, device=x.device, dtype=x.dtype).repeat(b, 1, 1)
            m[:, :, 2] = t
            x = KT.warp_affine(x, m, (h, w), padding_mode="border", align_corners=True)
        f = float(torch.empty(()).uniform_(*self.scale))
        if f < 0.99:
            small = (max(8, round(h * f)), max(8, round(w * f)))
            x = KT.resize(KT.resize(x, small, interpolation="bilinear", antialias=True), (h, w), interpolation="bilinear")
        q = torch.empty(b, device=x.device).uniform_(*self.quality)
        y = jpeg_codec_differentiable(x.clamp(0, 1), q)
        keep = (torch.rand(b, device=x.device) < self.jpeg_prob).view(b, 1, 1, 1)
        return torch.where(keep, y, x)


__all__ = ["PostingTransform", "RandomAffine", "ResizePad"]
