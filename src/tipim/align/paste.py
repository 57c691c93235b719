"""Masks computed on aligned crops, warped back into the photo they came from.

Each face's mask (protected crop minus original crop, in 8-bit levels) is warped through the
inverse of its photo->crop matrix into the face's bounding rectangle only; pixels outside every
face's crop area keep their exact value. A bilinear warp of values in [-eps, eps] stays in
[-eps, eps], and the final clamp is done on integers, so the written photo obeys the bound.
"""

from __future__ import annotations

import math

import kornia.geometry.transform as KT
import numpy as np
import torch

from tipim.align.transform import ARCFACE_SIZE, invert_affine


def _crop_rect(matrix: torch.Tensor, size: int, h: int, w: int) -> tuple[int, int, int, int]:
    """Bounding rectangle (x0, y0, x1, y1), clipped to the photo, of the crop's footprint."""
    inv = invert_affine(matrix.double())
    corners = torch.tensor([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], dtype=torch.float64)
    pts = corners @ inv.T
    x0, y0 = (max(0, math.floor(float(v)) - 1) for v in pts.min(0).values)
    x1, y1 = min(w, math.ceil(float(pts[:, 0].max())) + 2), min(h, math.ceil(float(pts[:, 1].max())) + 2)
    return x0, y0, x1, y1


def paste_masks(photo: np.ndarray, x_r: torch.Tensor, x_p: torch.Tensor, matrices: torch.Tensor, eps: int) -> tuple[np.ndarray, np.ndarray]:
    """The protected photo (uint8, same size) and the boolean map of pixels that faces may touch.

    Args:
        photo: (H, W, 3) uint8, the photo the crops were taken from.
        x_r, x_p: (N, 3, S, S) uint8 original and protected crops.
        matrices: (N, 2, 3) photo->crop matrices (as returned by ``align_crop``).
        eps: L-inf bound in 8-bit levels.
    """
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"photo must be (H, W, 3) uint8, got {photo.shape} {photo.dtype}")
    if x_r.shape != x_p.shape or x_r.dim() != 4 or len(matrices) != len(x_r):
        raise ValueError(f"crops {tuple(x_r.shape)} / {tuple(x_p.shape)} and matrices {tuple(matrices.shape)} do not match")
    h, w = photo.shape[:2]
    size = x_r.shape[-1]
    delta = torch.zeros(3, h, w, dtype=torch.float32)
    region = torch.zeros(h, w, dtype=torch.bool)
    for r, p, m in zip(x_r.cpu(), x_p.cpu(), torch.as_tensor(matrices, dtype=torch.float32).cpu()):
        x0, y0, x1, y1 = _crop_rect(m, size, h, w)
        if x1 <= x0 or y1 <= y0:
            continue
        to_rect = invert_affine(m)  # crop -> photo, then into the rectangle's coordinates
        to_rect[:, 2] -= torch.tensor([x0, y0], dtype=to_rect.dtype)
        d = (p.float() - r.float())[None]
        inside = torch.ones(1, 1, size, size)
        warped = KT.warp_affine(torch.cat([d, inside], 1), to_rect[None], (y1 - y0, x1 - x0), mode="bilinear", padding_mode="zeros", align_corners=True)[0]
        delta[:, y0:y1, x0:x1] += warped[:3]
        region[y0:y1, x0:x1] |= warped[3] > 0
    delta = delta.clamp(-eps, eps) * region  # overlapping faces: the sum is clamped too
    base = torch.from_numpy(photo).permute(2, 0, 1).float()
    out = (base + delta).round()
    out = torch.minimum(torch.maximum(out, base - eps), base + eps).clamp(0, 255)
    return out.to(torch.uint8).permute(1, 2, 0).numpy(), region.numpy()


def crop_faces(photo: np.ndarray, matrices: torch.Tensor, size: int = ARCFACE_SIZE) -> torch.Tensor:
    """Re-crop faces from a photo with known matrices: (N, 3, size, size) float in [0, 1]."""
    from tipim.align.transform import warp_to_template

    img = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255.0
    m = torch.as_tensor(matrices, dtype=torch.float32).cpu()
    return warp_to_template(img.expand(len(m), -1, -1, -1), m, size).clamp(0, 1)


__all__ = ["crop_faces", "paste_masks"]
