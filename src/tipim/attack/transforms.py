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


__all__ = ["RandomAffine", "ResizePad"]
