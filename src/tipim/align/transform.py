"""Five-point similarity alignment: templates, the Umeyama estimate, and warps both ways.

The transform is a 2x3 matrix mapping photo pixels to template pixels; it is kept with every
aligned face so a mask computed on the crop can be warped back into the photo.
"""

from __future__ import annotations

import kornia.geometry.transform as KT
import torch

# Landmark order everywhere: left eye, right eye, nose, mouth left, mouth right (MTCNN's order).
ARCFACE_TEMPLATE = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
ARCFACE_SIZE = 112
DLIB150_TEMPLATE = torch.tensor(
    [[43.28, 35.41], [101.46, 34.68], [73.10, 72.36], [44.87, 100.04], [97.83, 101.77]]
)


def estimate_similarity(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (rotation, uniform scale, translation) taking ``src`` onto ``dst``.

    Umeyama (1991), batched: ``src``/``dst`` are (N, 2) or (B, N, 2); returns (2, 3) or (B, 2, 3).
    """
    single = src.dim() == 2
    if single:
        src, dst = src[None], dst[None]
    if src.shape != dst.shape or src.shape[-1] != 2:
        raise ValueError(f"expected matching (B, N, 2) point sets, got {tuple(src.shape)} and {tuple(dst.shape)}")
    src, dst = src.double(), dst.double()
    mu_s, mu_d = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    s, d = src - mu_s, dst - mu_d
    cov = d.transpose(1, 2) @ s / src.shape[1]
    u, sig, vt = torch.linalg.svd(cov)
    e = torch.ones_like(sig)
    e[:, -1] = torch.sign(torch.linalg.det(u @ vt))
    rot = u @ torch.diag_embed(e) @ vt
    var_s = (s**2).sum(dim=(1, 2)) / src.shape[1]
    scale = (sig * e).sum(1) / var_s
    t = mu_d.transpose(1, 2) - scale[:, None, None] * rot @ mu_s.transpose(1, 2)
    m = torch.cat([scale[:, None, None] * rot, t], dim=2).float()
    return m[0] if single else m


def invert_affine(m: torch.Tensor) -> torch.Tensor:
    """Inverse of a (.., 2, 3) affine matrix."""
    a, t = m[..., :2], m[..., 2:]
    ai = torch.linalg.inv(a)
    return torch.cat([ai, -ai @ t], dim=-1)


def warp_to_template(image: torch.Tensor, matrix: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Differentiable crop: ``image`` (B, C, H, W) through ``matrix`` (B, 2, 3) to a ``size`` crop."""
    hw = (size, size) if isinstance(size, int) else size
    return KT.warp_affine(image, matrix, hw, mode="bilinear", padding_mode="border", align_corners=True)


__all__ = [
    "ARCFACE_SIZE",
    "ARCFACE_TEMPLATE",
    "DLIB150_TEMPLATE",
    "estimate_similarity",
    "invert_affine",
    "warp_to_template",
]
