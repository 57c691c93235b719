"""Open-set identification success as torchmetrics metrics: sum states, so they reduce across
DDP ranks with one all-reduce and tolerate uneven shards.

Rank-N targeted success: the N nearest gallery images include one of a target identity.
Rank-N untargeted success: the N nearest gallery images include no image of the true identity.
On unprotected probes the same counts give the baseline row: clean Rank-1 accuracy is
``1 - rank1_ut``, and ``rank1_t``/``rank5_t`` are how often a target shows up by chance.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from tipim.attack.objectives import mmd


class RankSuccess(Metric):
    full_state_update = False
    higher_is_better = True

    def __init__(self, ranks: tuple[int, ...] = (1, 5), **kwargs):
        super().__init__(**kwargs)
        self.ranks = tuple(ranks)
        for n in self.ranks:
            self.add_state(f"targeted_{n}", torch.tensor(0), dist_reduce_fx="sum")
            self.add_state(f"untargeted_{n}", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, gallery_labels: torch.Tensor, true_labels: torch.Tensor, target_labels: torch.Tensor) -> None:
        """``scores`` (B, G) similarities (higher = closer); labels are integer identity ids."""
        if scores.dim() != 2 or scores.shape[1] != gallery_labels.shape[0] or scores.shape[0] != true_labels.shape[0]:
            raise ValueError(f"scores must be (B, G) = ({true_labels.shape[0]}, {gallery_labels.shape[0]}), got {tuple(scores.shape)}")
        k = min(max(self.ranks), scores.shape[1])
        top = gallery_labels[scores.topk(k, dim=1).indices]  # (B, k) identity ids, nearest first
        is_target = torch.isin(top, target_labels)
        is_true = top == true_labels[:, None]
        for n in self.ranks:
            setattr(self, f"targeted_{n}", getattr(self, f"targeted_{n}") + is_target[:, :n].any(1).sum())
            setattr(self, f"untargeted_{n}", getattr(self, f"untargeted_{n}") + (~is_true[:, :n].any(1)).sum())
        self.total += scores.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        t = self.total.clamp_min(1).float()
        out = {}
        for n in self.ranks:
            out[f"rank{n}_t"] = getattr(self, f"targeted_{n}").float() / t
            out[f"rank{n}_ut"] = getattr(self, f"untargeted_{n}").float() / t
        return out


class SetMMD(Metric):
    """MMD between the protected and the original image sets (flattened 8-bit faces in [0, 1])."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("protected", [], dist_reduce_fx="cat")
        self.add_state("original", [], dist_reduce_fx="cat")

    def update(self, x_p: torch.Tensor, x_r: torch.Tensor) -> None:
        self.protected.append(x_p.flatten(1).float())
        self.original.append(x_r.flatten(1).float())

    def compute(self) -> torch.Tensor:
        p = torch.cat(self.protected) if isinstance(self.protected, list) else self.protected
        r = torch.cat(self.original) if isinstance(self.original, list) else self.original
        return mmd(p, r)


__all__ = ["RankSuccess", "SetMMD"]
