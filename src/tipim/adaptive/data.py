"""(protected, clean) crop pairs as a Lightning DataModule, split by person, seeded."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


def load_pairs(paths: list[str] | str) -> dict:
    """One or more ``pairs.pt`` files (``tipim.adaptive.pairs.collect_pairs``) as one set; read
    with ``weights_only=True``, so a pairs file cannot run code."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    parts = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"pairs file {p} does not exist; make it with: python benchmarks/adaptive_attack.py pairs")
        parts.append(torch.load(p, weights_only=True))
    return {
        "clean": torch.cat([p["clean"] for p in parts]),
        "protected": torch.cat([p["protected"] for p in parts]),
        "ids": [i for p in parts for i in p["ids"]],
    }


class PairDataset(Dataset):
    """Float [0, 1] pairs; ``augment`` flips both crops of a pair together (a face is symmetric
    enough, a mask is not: the flip doubles what the networks see of the masks)."""

    def __init__(self, clean: torch.Tensor, protected: torch.Tensor, augment: bool = False):
        if clean.shape != protected.shape or clean.ndim != 4 or clean.shape[1:] != (3, 112, 112):
            raise ValueError(f"pairs must be two (N, 3, 112, 112) tensors of one shape, got {tuple(clean.shape)} and {tuple(protected.shape)}")
        self.clean, self.protected, self.augment = clean, protected, augment

    def __len__(self) -> int:
        return len(self.clean)

    def __getitem__(self, i: int) -> dict:
        c, p = self.clean[i].float() / 255, self.protected[i].float() / 255
        if self.augment and torch.rand(()) < 0.5:
            c, p = c.flip(-1), p.flip(-1)
        return {"clean": c, "protected": p}


class PairData(L.LightningDataModule):
    """``pairs``: pairs files; ``val_share`` of the people (seeded) are held out for validation."""

    def __init__(self, pairs: list[str], val_share: float = 0.1, batch_size: int = 16, seed: int = 0, num_workers: int = 0):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        d = load_pairs(self.hparams.pairs)
        order = torch.randperm(len(d["ids"]), generator=torch.Generator().manual_seed(self.hparams.seed))
        n_val = max(1, round(len(order) * self.hparams.val_share))
        val, train = order[:n_val], order[n_val:]
        self.train_set = PairDataset(d["clean"][train], d["protected"][train], augment=True)
        self.val_set = PairDataset(d["clean"][val], d["protected"][val])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, self.hparams.batch_size, shuffle=True, num_workers=self.hparams.num_workers, drop_last=len(self.train_set) > self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.hparams.batch_size, num_workers=self.hparams.num_workers)
