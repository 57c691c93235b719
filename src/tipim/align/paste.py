"""Masks that live in the photo's own pixels.

Each face is protected over its *region* (the rectangle, clipped to the photo, around the aligned
crop's footprint). The surrogate sees the region through ``CropView``, a differentiable
photo-to-crop warp that reproduces the aligner's crop, so the optimised pixels are the written
pixels at any face size: a 30-px face is not optimised at 112 px and then averaged away, and a
1000-px face is seen with area averaging so that every pixel of it takes part. ``paste_regions``
writes the protected regions back with the bound exact in 8-bit photo pixels.

A face of more than ``GRID_PIXELS_PER_CROP_PIXEL * 2`` photo pixels per crop pixel (about 250 px
wide and up) keeps its mask on a coarser *mask grid*: the region box-averaged by an integer
factor ``s`` (``mask_grid_factor``) to 2-4 grid pixels per crop pixel. The mask reaches the photo
by bilinear upsampling (``upsample_mask``): smooth, every pixel of the region takes its share,
and the bound holds because each photo pixel's change is a convex mix of grid changes. Box-
averaging the upsampled mask gives the grid mask blurred by a fixed 3-tap kernel
(``grid_blur``), which is what the surrogate is shown (``GridMaskView``), so the optimiser sees
what any area resampler of the written photo will see. Cost and memory then follow the face's
crop, not its pixel count: a 2,700-px face is optimised on a ~300 px grid.
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


GRID_PIXELS_PER_CROP_PIXEL = 2  # the mask grid's resolution: at least this many grid pixels per crop pixel


def mask_grid_factor(matrix) -> int:
    """Photo pixels per mask-grid pixel (per side): 1 (the mask lives in photo pixels) below
    ``2 * GRID_PIXELS_PER_CROP_PIXEL`` photo pixels per crop pixel, else the integer factor that
    leaves 2-4 grid pixels per crop pixel."""
    return max(1, math.floor(photo_pixels_per_crop_pixel(matrix) / GRID_PIXELS_PER_CROP_PIXEL))


def grid_matrix(matrix, s: int) -> torch.Tensor:
    """A region->crop matrix re-expressed for the region's mask grid of factor ``s`` (grid pixel
    ``q`` covers region pixels ``s*q .. s*q + s - 1``, its centre at ``s*q + (s - 1) / 2``)."""
    m = torch.as_tensor(matrix, dtype=torch.float64)
    up = torch.tensor([[s, 0.0, (s - 1) / 2], [0.0, s, (s - 1) / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return m @ up


def to_grid(region: torch.Tensor, s: int, band: int = 32) -> torch.Tensor:
    """(3, h, w) uint8 region -> (3, ceil(h/s), ceil(w/s)) float grid in [0, 1]: box averages, the
    last partial row/column averaged with the edge repeated (as ``CropView``'s border clamp).
    Computed ``band`` grid rows at a time: no float copy of a large region."""
    if region.dim() != 3 or region.dtype != torch.uint8:
        raise ValueError(f"to_grid takes a (3, h, w) uint8 region, got {tuple(region.shape)} {region.dtype}")
    h, w = region.shape[1:]
    if s == 1:
        return region.float().div_(255.0)
    rows = []
    for y in range(0, h, band * s):
        x = region[None, :, y : y + band * s].float().div_(255.0)
        x = F.pad(x, (0, -w % s, 0, -x.shape[2] % s), mode="replicate") if (x.shape[2] % s or w % s) else x
        rows.append(F.avg_pool2d(x, s)[0])
    return torch.cat(rows, 1)


def upsample_mask(mask: torch.Tensor, s: int, h: int, w: int, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """A grid mask (3, hg, wg) as a photo-pixel mask (3, h, w): bilinear (half-pixel centres,
    edges held), so every photo pixel takes a convex mix of the grid changes: ``|out| <= max |mask|``.
    ``rows``: only photo rows [y0, y1) (a band; the same values as the whole)."""
    if s == 1:
        return mask[:, :h, :w] if rows is None else mask[:, rows[0] : rows[1], :w]
    y0, y1 = rows if rows is not None else (0, h)
    g0, g1 = max(0, y0 // s - 1), min(mask.shape[1], -(-y1 // s) + 1)  # the grid rows it mixes, with a halo
    up = F.interpolate(mask[None, :, g0:g1], scale_factor=s, mode="bilinear", align_corners=False)[0]
    return up[:, y0 - g0 * s : y1 - g0 * s, :w]


def grid_blur_weight(s: int) -> float:
    """``a`` of the kernel ``[a, 1 - 2a, a]`` that box-averaging (factor ``s``) a bilinear
    upsampling (factor ``s``) amounts to, per axis: 1/8 for even ``s``, tending to 1/8."""
    return sum(max(0.0, 0.5 - (k + 0.5) / s) for k in range(s)) / s


def grid_blur(mask: torch.Tensor, s: int) -> torch.Tensor:
    """``to_grid``'s box average of ``upsample_mask(mask)``, computed on the grid: (N, 3, h, w)."""
    a = grid_blur_weight(s)
    if a == 0.0:
        return mask
    k = mask.new_tensor([a, 1 - 2 * a, a])
    c = mask.shape[1]
    x = F.pad(mask, (1, 1, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 3).expand(c, 1, 1, 3), groups=c)
    x = F.pad(x, (0, 0, 1, 1), mode="replicate")
    return F.conv2d(x, k.view(1, 1, 3, 1).expand(c, 1, 3, 1), groups=c)


class GridMaskView(nn.Module):
    """The surrogate's view of faces whose masks live on a mask grid: ``view(x_r + grid_blur(x - x_r))``
    for those faces (what box-averaging the written photo gives back), ``view(x)`` for the others.

    Args:
        view: the crop view (``CropView``) of the grids.
        x_r: (B, 3, H, W) the original grids (padded batch).
        factors: each face's ``mask_grid_factor`` (1: unchanged).
        sizes: (B, 2) each face's real (h, w) in the padded batch.
    """

    def __init__(self, view: nn.Module, x_r: torch.Tensor, factors: list[int], sizes: torch.Tensor):
        super().__init__()
        if len(factors) != len(x_r) or len(sizes) != len(x_r):
            raise ValueError(f"GridMaskView of {len(x_r)} faces got {len(factors)} factors and {len(sizes)} sizes")
        self.view, self.faces = view, len(x_r)
        self.register_buffer("x_r", x_r.detach(), persistent=False)
        self.coarse = [(i, s, int(h), int(w)) for i, (s, (h, w)) in enumerate(zip(factors, sizes.tolist())) if s > 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.coarse:
            return self.view(x)
        copies = len(x) // max(self.faces, 1)
        x = x.clone()
        for i, s, h, w in self.coarse:
            rows = slice(i * copies, (i + 1) * copies)
            base = self.x_r[i, :, :h, :w]
            x[rows, :, :h, :w] = base + grid_blur(x[rows, :, :h, :w] - base, s)
        return self.view(x)


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


def _overlapping(boxes: list) -> list[list[int]]:
    """The boxes grouped into clusters of (transitively) overlapping rectangles."""
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, a in enumerate(boxes):
        for j in range(i):
            b = boxes[j]
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                parent[root(i)] = root(j)
    clusters: dict[int, list[int]] = {}
    for i in range(len(boxes)):
        clusters.setdefault(root(i), []).append(i)
    return list(clusters.values())


def paste_regions(photo: np.ndarray, regions_r, regions_p, boxes: list, eps: int, band: int = 512) -> np.ndarray:
    """The protected photo (uint8, same size).

    ``regions_r``/``regions_p``: N (3, H, W) uint8 original and protected regions (a padded
    tensor or a list), top-left aligned; ``boxes``: the N (x0, y0, x1, y1) rectangles they came
    from. Overlapping faces add their changes; the sum is clamped on integers, so the photo obeys
    the bound exactly. Memory: one copy of the photo, plus the changes over each cluster of
    overlapping rectangles."""
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"photo must be (H, W, 3) uint8, got {photo.shape} {photo.dtype}")
    if len(regions_r) != len(regions_p) or len(boxes) != len(regions_r) or any(r.shape != p.shape or r.dim() != 3 for r, p in zip(regions_r, regions_p)):
        raise ValueError(f"{len(regions_r)} original / {len(regions_p)} protected regions and {len(boxes)} boxes do not match")
    out = photo.copy()
    for cluster in _overlapping(boxes):
        cx0, cy0 = min(boxes[j][0] for j in cluster), min(boxes[j][1] for j in cluster)
        cx1, cy1 = max(boxes[j][2] for j in cluster), max(boxes[j][3] for j in cluster)
        for by0 in range(cy0, cy1, band):  # a band of rows at a time: no full-size integer copies
            by1 = min(cy1, by0 + band)
            delta = torch.zeros(3, by1 - by0, cx1 - cx0, dtype=torch.int16)
            for j in cluster:
                x0, y0, x1, y1 = boxes[j]
                a, b = max(y0, by0), min(y1, by1)
                if a < b:
                    r, p = regions_r[j][:, a - y0 : b - y0, : x1 - x0], regions_p[j][:, a - y0 : b - y0, : x1 - x0]
                    delta[:, a - by0 : b - by0, x0 - cx0 : x1 - cx0] += p.short() - r.short()
            base = torch.from_numpy(out[by0:by1, cx0:cx1]).permute(2, 0, 1).short()
            out[by0:by1, cx0:cx1] = (base + delta.clamp(-eps, eps)).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return out


def protect_region(region: torch.Tensor, mask: torch.Tensor, s: int, band: int = 256) -> torch.Tensor:
    """A face region (3, h, w) uint8 with its grid mask (3, hg, wg, float, factor ``s``) applied in
    photo pixels: (3, h, w) uint8, each pixel within ``ceil(255 * max |mask|)`` levels (``paste_regions``
    then clamps the change to the exact bound). ``band`` photo rows at a time."""
    h, w = region.shape[1:]
    out = torch.empty_like(region)
    mask = mask.float()
    for y in range(0, h, band):
        y1 = min(h, y + band)
        x = region[:, y:y1].float() + upsample_mask(mask, s, h, w, (y, y1)) * 255.0
        out[:, y:y1] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


LARGE_PHOTO = 4_000_000  # pixels; above this, faces are cropped from their neighbourhood only


def crop_faces(photo: np.ndarray, matrices, size: int = ARCFACE_SIZE) -> torch.Tensor:
    """Faces cropped from a photo with known photo->crop matrices, as the aligner crops (a
    bilinear warp): (N, 3, size, size) float in [0, 1]. A photo above ``LARGE_PHOTO`` pixels is
    sampled at the crop's points directly (the same bilinear samples up to float rounding; a
    float copy of the whole photo would be 12 bytes a pixel)."""
    from tipim.align.transform import warp_to_template

    m = torch.as_tensor(np.asarray(matrices), dtype=torch.float32).cpu().reshape(-1, 2, 3)
    h, w = photo.shape[:2]
    if h * w <= LARGE_PHOTO:
        img = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255.0
        return warp_to_template(img.expand(len(m), -1, -1, -1), m, size).clamp(0, 1)
    out = []
    for mi in m:  # bilinear at each crop pixel's photo point, edges held: only 4 photo pixels per crop pixel are read
        v, u = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
        xy = torch.stack([u, v, torch.ones_like(u)], -1) @ invert_affine(mi.double()).T
        x, y = xy[..., 0].clamp(0, w - 1), xy[..., 1].clamp(0, h - 1)
        xa, ya = x.floor().long(), y.floor().long()
        xb, yb = (xa + 1).clamp(max=w - 1), (ya + 1).clamp(max=h - 1)
        fx, fy = (x - xa)[..., None], (y - ya)[..., None]
        px = lambda yy, xx: torch.from_numpy(photo[yy.numpy(), xx.numpy()]).double()  # noqa: E731
        crop = (px(ya, xa) * (1 - fx) + px(ya, xb) * fx) * (1 - fy) + (px(yb, xa) * (1 - fx) + px(yb, xb) * fx) * fy
        out.append((crop / 255.0).float().permute(2, 0, 1).clamp(0, 1))
    return torch.stack(out) if out else torch.zeros(0, 3, size, size)


__all__ = [
    "CropView",
    "GridMaskView",
    "crop_faces",
    "face_region",
    "grid_blur",
    "grid_matrix",
    "mask_grid_factor",
    "paste_regions",
    "photo_pixels_per_crop_pixel",
    "protect_region",
    "region_matrix",
    "to_grid",
    "upsample_mask",
]
