"""One interface for every face-recognition model.

An embedder takes RGB faces in [0, 1], shape (B, 3, 112, 112), aligned to the ArcFace template,
and returns (B, D) embeddings. Each model's own input (size, crop, colour scale, normalisation)
is reached *differentiably* inside ``preprocess``, so attack gradients flow to the 112 crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tipim.align.transform import ARCFACE_SIZE, ARCFACE_TEMPLATE, estimate_similarity, warp_to_template


def check_faces(x: torch.Tensor, size: int = ARCFACE_SIZE) -> None:
    """Shape check with a message that says what an embedder expects."""
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2:] != (size, size):
        raise ValueError(
            f"embedders take RGB faces of shape (B, 3, {size}, {size}) in [0, 1], aligned to the ArcFace "
            f"template (tipim data align makes them); got {tuple(x.shape)}"
        )


class Embedder(nn.Module):
    """A frozen face-recognition network behind the common 112x112 ArcFace-aligned input.

    Args:
        net: the network, taking its native input (B, 3, S, S).
        native_size: S.
        template: the five landmarks in the native input, or None to resize the whole 112 crop.
        pixel_scale: multiply [0, 1] pixels by this first (255 for networks trained on 0..255).
        mean, std: then ``(x - mean) / std`` per channel.
        prewhiten: then per-image standardisation (FaceNet's ``(x - mean) / max(std, 1/sqrt(n))``).
        bgr: feed channels as BGR.
        name: how logs and manifests call this model.
    """

    def __init__(
        self,
        net: nn.Module,
        native_size: int = ARCFACE_SIZE,
        template: Sequence[Sequence[float]] | None = None,
        pixel_scale: float = 1.0,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        prewhiten: bool = False,
        bgr: bool = False,
        name: str = "embedder",
    ):
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.native_size = int(native_size)
        self.pixel_scale = float(pixel_scale)
        self.prewhiten = prewhiten
        self.bgr = bgr
        self.name = name
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        if template is not None:
            m = estimate_similarity(ARCFACE_TEMPLATE, torch.as_tensor(template, dtype=torch.float32))
            self.register_buffer("warp", m[None], persistent=False)
        else:
            self.warp = None
        self._dim: int | None = None

    def train(self, mode: bool = True):
        # The network stays in eval mode: batch-norm statistics must never move during an attack.
        super().train(mode)
        self.net.eval()
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        check_faces(x)
        if self.warp is not None:
            x = warp_to_template(x, self.warp.expand(x.shape[0], 2, 3), self.native_size)
        elif self.native_size != ARCFACE_SIZE:
            x = F.interpolate(x, size=(self.native_size, self.native_size), mode="bilinear", align_corners=False)
        if self.bgr:
            x = x.flip(1)
        x = (x * self.pixel_scale - self.mean) / self.std
        if self.prewhiten:
            n = x[0].numel()
            mu = x.mean(dim=(1, 2, 3), keepdim=True)
            sd = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False).clamp_min(1.0 / n**0.5)
            x = (x - mu) / sd
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x)).flatten(1)

    @property
    def dim(self) -> int:
        if self._dim is None:
            p = next(self.net.parameters(), None)
            device = p.device if p is not None else "cpu"
            with torch.no_grad():
                self._dim = int(self(torch.zeros(1, 3, ARCFACE_SIZE, ARCFACE_SIZE, device=device)).shape[1])
        return self._dim


class Ensemble(nn.Module):
    """A weighted ensemble that is itself an embedder.

    It returns the concatenation of ``sqrt(w_k) * normalise(e_k(x))``, so the squared distance
    between two ensemble embeddings is exactly the weighted sum of the members' squared distances
    of normalised embeddings, and their dot product the weighted sum of cosines.
    """

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None = None, name: str | None = None):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        weights = [1.0] * len(members) if weights is None else list(weights)
        if len(weights) != len(members) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"ensemble weights must be {len(members)} non-negative numbers with a positive sum, got {weights}")
        total = sum(weights)
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor([w / total for w in weights]), persistent=False)
        self.name = name or "+".join(getattr(m, "name", type(m).__name__) for m in members)

    def member_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each member's block of the embedding (``sqrt(w_k) * normalise(e_k(x))``), so an attack
        can take each member's gradient on its own (``tipim.attack.MemberBalance``)."""
        return [w.sqrt() * F.normalize(m(x), dim=1) for m, w in zip(self.members, self.weights)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.member_outputs(x), dim=1)

    @property
    def dim(self) -> int:
        return sum(m.dim for m in self.members)


__all__ = ["Embedder", "Ensemble", "check_faces"]
