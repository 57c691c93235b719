"""The official LFW 10-fold verification protocol (``pairs.txt``: 10 folds of 300 + 300 pairs).

For each fold, the cosine threshold that maximises accuracy on the other nine folds is applied to
that fold; the score is the mean and standard deviation of the ten fold accuracies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tipim.files import load_rgb


@dataclass(frozen=True)
class Pair:
    fold: int
    a: str  # relative image path without suffix, e.g. "Abel_Pacheco/Abel_Pacheco_0001"
    b: str
    same: bool


def read_pairs(path: str | Path) -> list[Pair]:
    lines = Path(path).read_text().split("\n")
    folds, per = (int(v) for v in lines[0].split())
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    if len(rows) != folds * per * 2:
        raise ValueError(f"{path}: expected {folds * per * 2} pairs after the header '{lines[0]}', found {len(rows)}")

    def rel(name: str, idx: str) -> str:
        return f"{name}/{name}_{int(idx):04d}"

    pairs = []
    for i, r in enumerate(rows):
        fold = i // (2 * per)
        if len(r) == 3:
            pairs.append(Pair(fold, rel(r[0], r[1]), rel(r[0], r[2]), True))
        elif len(r) == 4:
            pairs.append(Pair(fold, rel(r[0], r[1]), rel(r[2], r[3]), False))
        else:
            raise ValueError(f"{path}: line {i + 2} is neither a same nor a different pair: {r}")
    return pairs


def load_faces(paths: list[Path]) -> torch.Tensor:
    """Face files as a float batch in [0, 1]."""
    return torch.stack([torch.from_numpy(load_rgb(p)).permute(2, 0, 1) for p in paths]).float() / 255.0


@torch.no_grad()
def embed_crops(model: torch.nn.Module, crops_u8: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised embeddings of aligned 112x112 uint8 crops (N, 3, 112, 112)."""
    x = crops_u8.float() / 255
    return torch.cat([F.normalize(model(x[i : i + batch_size]), dim=1) for i in range(0, len(x), batch_size)])


def embed_files(model: torch.nn.Module, paths: list[Path], batch_size: int = 64, progress=None) -> torch.Tensor:
    """L2-normalised embeddings of aligned 112x112 face files."""
    out = []
    for i in range(0, len(paths), batch_size):
        out.append(F.normalize(model(load_faces(paths[i : i + batch_size])), dim=1))
        if progress:
            progress(min(i + batch_size, len(paths)), len(paths))
    return torch.cat(out)


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold (midpoint between sorted scores) that maximises verification accuracy."""
    order = np.argsort(scores)
    s, y = scores[order], same[order].astype(np.int64)
    # Predict "same" for scores > t. For t between s[k-1] and s[k]: correct = negatives below + positives above.
    neg_below = np.concatenate([[0], np.cumsum(1 - y)])
    pos_above = np.concatenate([[y.sum()], y.sum() - np.cumsum(y)])
    k = int(np.argmax(neg_below + pos_above))
    if k == 0:
        return float(s[0] - 1e-6)
    if k == len(s):
        return float(s[-1] + 1e-6)
    return float((s[k - 1] + s[k]) / 2)


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[float, float, list[float]]:
    accs = []
    for f in np.unique(folds):
        test = folds == f
        t = best_threshold(scores[~test], same[~test])
        accs.append(float(((scores[test] > t) == same[test]).mean()))
    return float(np.mean(accs)), float(np.std(accs)), accs


def verify_lfw(model: torch.nn.Module, aligned_root: str | Path, pairs_txt: str | Path, batch_size: int = 64, progress=None) -> dict:
    """Accuracy of ``model`` on LFW pairs over ArcFace-aligned crops (``tipim data align`` output)."""
    root = Path(aligned_root)
    pairs = read_pairs(pairs_txt)
    names = sorted({p.a for p in pairs} | {p.b for p in pairs})
    paths = [root / f"{n}.png" for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} aligned LFW images are missing under {root} (first: {missing[0]}); "
            f"run: tipim data align --src <lfw> --out {root}"
        )
    emb = embed_files(model, paths, batch_size, progress)
    index = {n: i for i, n in enumerate(names)}
    a = emb[[index[p.a] for p in pairs]]
    b = emb[[index[p.b] for p in pairs]]
    scores = (a * b).sum(1).numpy()
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    mean, std, accs = kfold_accuracy(scores, same, folds)
    # one threshold from all pairs: what a service would use to say "same person" (the self-check's)
    return dict(accuracy=mean, std=std, pairs=len(pairs), folds=accs, threshold=best_threshold(scores, same))


__all__ = ["Pair", "best_threshold", "embed_crops", "embed_files", "kfold_accuracy", "read_pairs", "verify_lfw"]
