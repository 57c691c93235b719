"""The batches of the two run kinds behind one interface, so ``ProtectionModule.predict_step``
treats crops and photos alike: a batch says which faces are attacked together (``attack_units``:
their mask variables, ids, MMD groups and the view that shows them as aligned crops) and turns the
results into its writer's prediction (``predictions``).

Crops (``CropBatch``): one unit, the readable faces. Photos (``PhotoBatch``): all the faces of the
batch's photos, in buckets of similar size (``size_buckets``), each face padded only to its bucket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Quantise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_p, x_r) in [0, 1] -> uint8 within the bound


@dataclass
class AttackUnit:
    """Faces attacked together: ``index`` into the batch, their mask variables ``x_r``
    (n, 3, H, W) in [0, 1], and how the attack sees them."""

    index: list[int]
    x_r: torch.Tensor
    ids: list[str]
    groups: torch.Tensor  # each face's MMD group
    view: nn.Module | None = None  # mask variables -> aligned crops; None: they are the crops


def _to8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8).cpu()


@dataclass
class CropBatch:
    """Aligned 112x112 faces (``ProtectDataModule``); an unreadable one has an ``error`` and a
    blank image."""

    id: list[str]
    source: list[str]
    error: list[str]
    image: torch.Tensor  # (B, 3, 112, 112)

    def __len__(self) -> int:
        return len(self.id)

    def mmd_groups(self, group: int) -> torch.Tensor:
        """Runs of ``group`` faces (the crop data cuts batches at multiples of ``group``, so these
        are the same runs of the sorted face list at any batch size)."""
        return torch.arange(len(self.id)) // group

    def attack_units(self, group: int) -> list[AttackUnit]:
        ok = [i for i, e in enumerate(self.error) if not e]
        if not ok:
            return []
        x_r = self.image[torch.tensor(ok, device=self.image.device)]
        return [AttackUnit(ok, x_r, [self.id[i] for i in ok], self.mmd_groups(group)[ok].to(x_r.device))]

    def predictions(self, done: list[tuple[AttackUnit, object]], quantise: Quantise, names: list[str], seconds: float) -> dict:
        out = {"id": self.id, "source": self.source, "error": self.error, "ok": torch.tensor([not e for e in self.error], dtype=torch.bool)}
        if not done:
            return out
        (unit, r), = done
        out.update(
            x_r=_to8(unit.x_r),
            x_p=quantise(r.x_p, unit.x_r).cpu(),
            target=[names[i] for i in r.target.tolist()],
            last_followed=[names[i] for i in r.last_followed.tolist()],
            changes=r.changes.cpu(),
            choice_rank=r.choice_rank.T.cpu(),
            d_r=r.d_r.cpu(),
            d_t=r.d_t.cpu(),
            objective=r.loss,
            seconds=seconds,
        )
        return out


@dataclass
class PhotoBatch:
    """The faces of a batch of photos (ids ``photo#k``) as their mask variables (``regions``: each
    face's region, or its mask grid, unpadded); ``view_matrices``/``view_sizes`` let ``CropView``
    show each as its aligned crop, ``view_grids`` are their mask-grid factors. Each photo row of
    ``photos`` keeps its ``faces`` count, not the regions (a batch moved to a device carries each
    region once)."""

    id: list[str]
    source: list[str]
    error: list[str]
    regions: list[torch.Tensor]
    photos: list[dict]
    view_matrices: torch.Tensor
    view_sizes: torch.Tensor
    view_grids: list[int]

    def __len__(self) -> int:
        return len(self.id)

    def mmd_groups(self, group: int) -> torch.Tensor:
        """Runs of ``group`` faces within each photo."""
        labels, base = [], 0
        for photo in self.photos:
            n = photo["faces"]
            labels.append(base + torch.arange(n) // group)
            base += -(-n // group)
        return torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)

    def attack_units(self, group: int) -> list[AttackUnit]:
        from tipim.align.paste import CropView, GridMaskView

        sizes, groups, units = self.view_sizes.cpu(), self.mmd_groups(group), []
        for idx in size_buckets(sizes, groups):
            h, w = (int(v) for v in sizes[idx].max(0).values)
            x_r = self.regions[idx[0]].new_zeros(len(idx), 3, h, w)
            for j, i in enumerate(idx):
                x_r[j, :, : sizes[i, 0], : sizes[i, 1]] = self.regions[i]
            view = CropView(self.view_matrices[idx], sizes[idx]).to(x_r.device)
            if any(self.view_grids[i] > 1 for i in idx):
                view = GridMaskView(view, x_r, [self.view_grids[i] for i in idx], sizes[idx])
            units.append(AttackUnit(idx, x_r, [self.id[i] for i in idx], groups[idx].to(x_r.device), view))
        return units

    def predictions(self, done: list[tuple[AttackUnit, object]], quantise: Quantise, names: list[str], seconds: float) -> dict:
        """Per face: ``x_r``/``x_p`` (uint8, its own mask variable's pixels: region or mask grid)
        and, for a face on a mask grid, ``mask`` (float)."""
        n = len(self.id)
        out = {"id": self.id, "source": self.source, "error": self.error, "photos": self.photos, "ok": torch.ones(n, dtype=torch.bool)}
        if not n:
            return out
        sizes, grids = self.view_sizes.cpu(), self.view_grids
        faces: list[dict] = [{} for _ in range(n)]
        for unit, r in done:
            x_p8, x_r8 = quantise(r.x_p, unit.x_r).cpu(), _to8(unit.x_r)
            for j, i in enumerate(unit.index):
                hh, ww = int(sizes[i, 0]), int(sizes[i, 1])
                faces[i] = {"x_r": x_r8[j, :, :hh, :ww], "x_p": x_p8[j, :, :hh, :ww], "target": int(r.target[j]), "last_followed": int(r.last_followed[j]),
                            "changes": r.changes[j].cpu(), "d_r": r.d_r[j].cpu(), "d_t": r.d_t[j].cpu(), "rank": r.choice_rank[:, j].cpu(),
                            "mask": (r.x_p[j, :, :hh, :ww] - unit.x_r[j, :, :hh, :ww]).cpu() if grids[i] > 1 else None}
        out.update(
            x_r=[f["x_r"] for f in faces],
            x_p=[f["x_p"] for f in faces],
            mask=[f["mask"] for f in faces],
            grids=list(grids),
            target=[names[f["target"]] for f in faces],
            last_followed=[names[f["last_followed"]] for f in faces],
            changes=torch.stack([f["changes"] for f in faces]),
            choice_rank=torch.stack([f["rank"] for f in faces]),
            d_r=torch.stack([f["d_r"] for f in faces]),
            d_t=torch.stack([f["d_t"] for f in faces]),
            objective=sum(r.loss * len(unit.index) for unit, r in done) / n,
            seconds=seconds,
        )
        return out


def size_buckets(sizes: torch.Tensor, groups: torch.Tensor, waste: float = 1.5) -> list[list[int]]:
    """Faces (indices) in buckets attacked together, each padded to its bucket's largest face.
    A bucket holds whole MMD groups (``groups``), so buckets change no result; groups join a bucket
    of similar sizes while its padded pixels stay within ``waste`` times its faces' own pixels:
    one big face never pads a crowd of small ones."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups.tolist()):
        members.setdefault(g, []).append(i)
    area = lambda idx: sum(int(sizes[i, 0]) * int(sizes[i, 1]) for i in idx)  # noqa: E731
    buckets: list[list[int]] = []
    for idx in sorted(members.values(), key=lambda idx: (-area(idx) / len(idx), idx[0])):
        if buckets:
            cand = buckets[-1] + idx
            h, w = (int(v) for v in sizes[cand].max(0).values)
            if h * w * len(cand) <= waste * area(cand):
                buckets[-1] = cand
                continue
        buckets.append(list(idx))
    return [sorted(b) for b in buckets]


__all__ = ["AttackUnit", "CropBatch", "PhotoBatch", "size_buckets"]
