""""Does it work, and how can I check?": after a photo is written, each protected face is found
again in the written file (detected and aligned anew, as a recognition service would) and shown
to zoo models that were *not* used to make its mask. A model still recognises the face when the
cosine similarity to the unprotected face is above that model's LFW verification threshold
(``results/lfw_verification.md``: the threshold that separates same from different people best on
the 6,000 LFW pairs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

THRESHOLDS_FILE = Path(__file__).resolve().parent / "lfw_thresholds.json"


def lfw_thresholds() -> dict[str, float]:
    """Cosine thresholds per zoo model, measured by ``tipim models verify`` (copied here so an
    installed package has them)."""
    return {k: float(v) for k, v in json.loads(THRESHOLDS_FILE.read_text()).items()}


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class IndependentCheck:
    """Re-detects protected faces in a written photo and asks each independent model whether it
    still matches them to the unprotected faces.

    Args:
        models: zoo names (those not used as surrogates; ``independent_models`` picks them).
        device: where the models run.
    """

    def __init__(self, models: list[str], device: str | torch.device = "cpu"):
        from tipim.align.aligner import FaceAligner
        from tipim.models import ZooEmbedder

        thresholds = lfw_thresholds()
        unknown = [m for m in models if m not in thresholds]
        if unknown:
            raise KeyError(f"no LFW threshold for {unknown}; the self-check takes zoo models: {sorted(thresholds)}")
        self.names = list(models)
        self.thresholds = {m: thresholds[m] for m in models}
        self.models = {m: ZooEmbedder(m).to(device).eval() for m in models}
        self.device = device
        self.aligner = FaceAligner(multi="all")

    def _embed(self, crops_u8: torch.Tensor) -> dict[str, torch.Tensor]:
        from tipim.evaluation.verification import embed_crops

        return {m: embed_crops(model, crops_u8.to(self.device)).cpu() for m, model in self.models.items()}

    def __call__(self, written: np.ndarray, original_crops: torch.Tensor, boxes: list) -> list[dict]:
        """Per face (``original_crops`` (N, 3, 112, 112) uint8 of the unprotected faces, ``boxes``
        their detection boxes): ``found`` in the written photo, and per model the cosine
        similarity and whether it is still ``recognised``."""
        faces, _ = self.aligner.faces(written)
        matches = [max(faces, key=lambda f: _iou(f.box, box), default=None) for box in boxes]
        found = [m is not None and _iou(m.box, box) >= 0.3 for m, box in zip(matches, boxes)]
        seen_crops = [torch.from_numpy(m.crop).permute(2, 0, 1) for m, ok in zip(matches, found) if ok]
        # one batch per model: the unprotected faces, then the faces found again
        both = self._embed(torch.cat([original_crops, torch.stack(seen_crops)]) if seen_crops else original_crops)
        clean = {m: e[: len(boxes)] for m, e in both.items()}
        seen = {m: e[len(boxes) :] for m, e in both.items()}
        out, k = [], 0
        for j, ok in enumerate(found):
            if not ok:
                out.append({"found": False, "recognised_by": [], "models": {}})
                continue
            per = {}
            for m in self.names:
                cos = float((seen[m][k] * clean[m][j]).sum())
                per[m] = {"cos": round(cos, 4), "recognised": cos > self.thresholds[m]}
            k += 1
            out.append({"found": True, "recognised_by": [m for m in self.names if per[m]["recognised"]], "models": per})
        return out


def independent_models(surrogates: list[str], choice: str | list[str] = "auto") -> list[str]:
    """``auto``: every fetched zoo model that did not make the mask; ``none``: no check; or names."""
    from tipim.zoo.registry import MODELS, is_fetched

    if choice == "none" or choice == []:
        return []
    if choice == "auto":
        return [m for m in MODELS if m not in surrogates and is_fetched(m)]
    names = [choice] if isinstance(choice, str) else list(choice)
    return [m for n in names for m in n.split(",") if m]


def describe(faces: list[dict], models: list[str]) -> str:
    """``independent check (sface, facenet, dlib-resnet): 3/4 faces recognised by none of 3 models, 1 by 1``."""
    if not models or not faces:
        return ""
    counts: dict[int, int] = {}
    for f in faces:
        k = len(f["recognised_by"])
        counts[k] = counts.get(k, 0) + 1
    parts = [f"{counts.get(0, 0)}/{len(faces)} faces recognised by none of {len(models)} models"]
    parts += [f"{n} by {k}" for k, n in sorted(counts.items()) if k > 0]
    return f"independent check ({', '.join(models)}): " + ", ".join(parts)


__all__ = ["IndependentCheck", "describe", "independent_models", "lfw_thresholds"]
