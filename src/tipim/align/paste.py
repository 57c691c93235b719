"""Masks that live in the photo's own pixels.

Each face is protected over its *region* (the rectangle, clipped to the photo, around the aligned
crop's footprint). The surrogate sees the region through ``CropView``, a differentiable
photo-to-crop warp that reproduces the aligner's crop, so the optimised pixels are the written
pixels at any face size: a 30-px face is not optimised at 112 px and then averaged away, and a
1000-px face is seen with area averaging so that every pixel of it takes part. ``paste_regions``
writes the protected regions back with the bound exact in 8-bit photo pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tipim.align.transform import ARCFACE_SIZE, invert_affine


def face_region(matrix, h: int, w: int, size: int = ARCFACE_SIZE, margin: int = 2) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), clipped to the photo: the bounding rectangle of the crop's footprint
    plus ``margin`` photo pixels."""
    inv = invert_affine(torch.as_tensor(matrix, dtype=torch.float64))
    corners = torch.tensor([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1], [size - 0.5, size - 0.5, 1]], dtype=torch.float64)
    pts = corners @ inv.T
    x0, y0 = (max(0, math.floor(float(v)) - margin) for v in pts.min(0).values)
    x1, y1 = min(w, math.ceil(float(pts[:, 0].max())) + margin + 1), min(h, math.ceil(float(pts[:, 1].max())) + margin + 1)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def region_matrix(matrix, x0: int, y0: int) -> torch.Tensor:
    """The photo->crop matrix re-expressed for pixels of a region whose corner is (x0, y0)."""
    m = torch.as_tensor(matrix, dtype=torch.float64).clone()
    m[:, 2] += m[:, :2] @ torch.tensor([float(x0), float(y0)], dtype=torch.float64)
    return m


def photo_pixels_per_crop_pixel(matrix) -> float:
    m = torch.as_tensor(matrix, dtype=torch.float64)
    return 1.0 / math.sqrt(abs(float(torch.linalg.det(m[:, :2]))))


class CropView(nn.Module):
    """The aligned crops that surrogates see of faces held as photo regions.

    Sampling is bilinear with coordinates clamped to each face's own region (what the aligner's
    border padding does on the whole photo), so a region of an unprotected photo gives back the
    aligner's crop. A face larger than the crop is sampled ``oversample`` x ``oversample`` times
    per crop pixel and averaged (area resampling): every photo pixel of the face gets a gradient.
    From 4 photo pixels per crop pixel up, the region is first box-averaged by ``oversample // 2``
    and then sampled twice or three times per crop pixel: the same area resampling, with 3-16x
    fewer samples on large faces (``grid_sample``'s backward was the largest cost after the
    surrogate on a 1920x1080 photo).

    Args:
        matrices: (B, 2, 3) region->crop matrices (``region_matrix``).
        sizes: (B, 2) each region's real (h, w) inside the padded batch tensor (top-left aligned).
        size: crop side.
        max_oversample: cap on the area-resampling factor.
    """

    def __init__(self, matrices: torch.Tensor, sizes: torch.Tensor, size: int = ARCFACE_SIZE, max_oversample: int = 8):
        super().__init__()
        # built on the CPU (small, float64) wherever the batch is; ``.to(device)`` moves the grids
        matrices = torch.as_tensor(matrices, dtype=torch.float64).detach().cpu()
        sizes = torch.as_tensor(sizes, dtype=torch.float64).detach().cpu()
        if matrices.dim() != 3 or matrices.shape[1:] != (2, 3) or sizes.shape != (len(matrices), 2):
            raise ValueError(f"CropView needs (B, 2, 3) matrices and (B, 2) sizes, got {tuple(matrices.shape)} and {tuple(sizes.shape)}")
        # each face's own area-resampling factor, so its crop does not depend on its batch mates
        self.s = [int(min(max_oversample, max(1, math.ceil(photo_pixels_per_crop_pixel(m) - 0.25)))) for m in matrices]
        self.size = size
        inv = [invert_affine(m) for m in matrices]  # crop -> region
        # faces grouped by (factor, region size); each group is sampled from its own unpadded
        # regions, so neither the batch's padding nor its other faces change a face's crop
        self.groups: list[tuple[int, int, int, int]] = []  # (samples, box, h, w); the faces are buffer idx<k>
        keys = [(f, int(hw[0]), int(hw[1])) for f, hw in zip(self.s, sizes.tolist())]
        for k, (f, h, w) in enumerate(sorted(set(keys))):
            idx = torch.tensor([i for i, key in enumerate(keys) if key == (f, h, w)])
            box = f // 2 if f >= 4 else 1  # box-average first, then sample ceil(f / box) times per crop pixel
            samples = -(-f // box)
            n = size * samples
            sub = (torch.arange(n, dtype=torch.float64) + 0.5) / samples - 0.5  # sample centres in crop pixels
            v, u = torch.meshgrid(sub, sub, indexing="ij")
            uv1 = torch.stack([u, v, torch.ones_like(u)], -1)  # (n, n, 3)
            xy = torch.einsum("hwk,bjk->bhwj", uv1, torch.stack([inv[i] for i in idx.tolist()]))  # (b, n, n, 2) region pixels
            hi = torch.tensor([w - 1.0, h - 1.0], dtype=torch.float64)
            xy = torch.minimum(xy.clamp_min(0), hi)  # border clamp inside each face's own region
            xy = (xy + 0.5) / box - 0.5  # in box-averaged pixels (box 1: unchanged)
            hb, wb = -(-h // box), -(-w // box)
            grid = torch.stack([2 * xy[..., 0] / max(wb - 1, 1) - 1, 2 * xy[..., 1] / max(hb - 1, 1) - 1], -1)
            self.register_buffer(f"grid{k}", grid, persistent=False)  # float64: cast to the faces' dtype when used
            self.register_buffer(f"idx{k}", idx, persistent=False)  # moved with the grids: no copy per call
            self.groups.append((samples, box, h, w))
        self.faces = len(matrices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B * n, 3, H, W), n copies of each face in a row (candidate steps) -> crops."""
        if len(x) % max(self.faces, 1):
            raise ValueError(f"CropView of {self.faces} faces got a batch of {len(x)}")
        copies = len(x) // max(self.faces, 1)
        out = x.new_empty(len(x), x.shape[1], self.size, self.size)
        for k, (f, box, h, w) in enumerate(self.groups):
            rows = (getattr(self, f"idx{k}")[:, None] * copies + torch.arange(copies, device=x.device)).flatten()
            grid = getattr(self, f"grid{k}").to(x.dtype).repeat_interleave(copies, 0)
            region = x[rows, :, :h, :w]
            if box > 1:  # the edge repeated up to whole boxes, as the border clamp does
                region = F.avg_pool2d(F.pad(region, (0, -w % box, 0, -h % box), mode="replicate"), box)
            crops = F.grid_sample(region, grid, mode="bilinear", padding_mode="border", align_corners=True)
            out[rows] = F.avg_pool2d(crops, f) if f > 1 else crops
        return out


def paste_regions(photo: np.ndarray, regions_r: torch.Tensor, regions_p: torch.Tensor, boxes: list, eps: int) -> tuple[np.ndarray, np.ndarray]:
    """The protected photo (uint8, same size) and the map of pixels that faces may touch.

    ``regions_r``/``regions_p``: (N, 3, H, W) uint8 original and protected regions, padded;
    ``boxes``: the N (x0, y0, x1, y1) rectangles they came from. Overlapping faces add their
    changes; the sum is clamped on integers, so the photo obeys the bound exactly."""
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"photo must be (H, W, 3) uint8, got {photo.shape} {photo.dtype}")
    if regions_r.shape != regions_p.shape or regions_r.dim() != 4 or len(boxes) != len(regions_r):
        raise ValueError(f"regions {tuple(regions_r.shape)} / {tuple(regions_p.shape)} and {len(boxes)} boxes do not match")
    h, w = photo.shape[:2]
    delta = torch.zeros(3, h, w, dtype=torch.int32)
    region = np.zeros((h, w), dtype=bool)
    for r, p, (x0, y0, x1, y1) in zip(regions_r, regions_p, boxes):
        d = p[:, : y1 - y0, : x1 - x0].int() - r[:, : y1 - y0, : x1 - x0].int()
        delta[:, y0:y1, x0:x1] += d
        region[y0:y1, x0:x1] = True
    base = torch.from_numpy(photo).permute(2, 0, 1).int()
    out = (base + delta.clamp(-eps, eps)).clamp(0, 255)
    return out.to(torch.uint8).permute(1, 2, 0).numpy(), region


def crop_faces(photo: np.ndarray, matrices: torch.Tensor, size: int = ARCFACE_SIZE) -> torch.Tensor:
    """Re-crop faces from a photo with known matrices: (N, 3, size, size) float in [0, 1]."""
    from tipim.align.transform import warp_to_template

    img = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255.0
    m = torch.as_tensor(matrices, dtype=torch.float32).cpu()
    return warp_to_template(img.expand(len(m), -1, -1, -1), m, size).clamp(0, 1)


__all__ = ["CropView", "crop_faces", "face_region", "paste_regions", "photo_pixels_per_crop_pixel", "region_matrix"]
