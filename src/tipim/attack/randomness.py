"""One random stream per image, so that what an image draws (its random start, input diversity,
posting transform, MMD views) does not depend on which images share its batch: batch 8 or 512,
1 or N processes, the same face gets the same mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A CPU tensor on ``device``; to a GPU through pinned memory and an asynchronous copy, so the
    host does not wait for the GPU's queued work at every draw (a copy from pageable memory does)."""
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class PerImageRandom:
    """Uniform draws from one ``torch.Generator`` per image (seeded from the image's id by
    ``ProtectionModule``). Every draw is made for every image of the batch in the same order, so
    an image's stream is the same whatever its neighbours are.

    Args:
        seeds: one seed per image.
        device: where the draws are returned (they are made on the CPU).
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str | None = None):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    @classmethod
    def from_global(cls, n: int, device: torch.device | str | None = None) -> PerImageRandom:
        """Seeds drawn from torch's global generator: reproducible under ``torch.manual_seed``,
        but tied to the batch (for direct use of the attack parts, not the protect runs)."""
        return cls(torch.randint(0, 2**62, (n,)).tolist(), device)

    def __len__(self) -> int:
        return len(self.generators)

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """(B, *shape) uniform in [0, 1): row b from image b's generator; on ``device`` (default:
        the streams' device)."""
        device = self.device if device is None else torch.device(device)
        if not self.generators:
            return torch.empty(0, *shape, dtype=dtype, device=device)
        rows = [torch.rand(shape, generator=g, dtype=torch.float64) for g in self.generators]
        return to_device(torch.stack(rows).to(dtype), device)

    def integers(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """(B, *shape) integers in [low, high)."""
        return (low + (self.rand(*shape, dtype=torch.float64) * (high - low)).floor().clamp(max=high - low - 1)).long()

    def subset(self, index: torch.Tensor | Sequence[int]) -> PerImageRandom:
        """The streams of some images (shared, not copied: drawing from one advances the other)."""
        out = PerImageRandom([], self.device)
        out.generators = [self.generators[int(i)] for i in index]
        return out


def rng_for(x: torch.Tensor, rng: PerImageRandom | None) -> PerImageRandom:
    """``rng``, checked against the batch, or per-image streams seeded from the global generator."""
    if rng is None:
        return PerImageRandom.from_global(len(x), x.device)
    if len(rng) != len(x):
        raise ValueError(f"PerImageRandom has {len(rng)} streams for a batch of {len(x)} images")
    return rng


__all__ = ["PerImageRandom", "rng_for", "to_device"]
