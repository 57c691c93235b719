"""What an attacker may do to a posted photo before recognising it, at no cost: re-encode, blur,
median-filter, denoise, downscale and back, reduce bit depth, or a chain of these.

A purification is named by a short spec, ``name:value`` joined by ``+`` for a chain
(``median:3+jpeg:75``): ``jpeg:Q``, ``blur:SIGMA`` (Gaussian), ``median:K`` (K x K), ``bilateral:S``
(colour sigma in 8-bit levels, spatial sigma 1.5), ``nlm:H`` (non-local means, filter strength
in 8-bit levels), ``down:F`` (area downscale by F, then bicubic back), ``bits:B`` (B bits per
channel). Each takes and returns an (H, W, 3) uint8 photo of the same size, and is deterministic.
"""

from __future__ import annotations

import io

import numpy as np


def _jpeg(photo: np.ndarray, q: float) -> np.ndarray:
    from PIL import Image

    from tipim.files import encode_image

    return np.array(Image.open(io.BytesIO(encode_image(photo, "jpeg", int(q)))).convert("RGB"))


def _blur(photo: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return _to8(gaussian_filter(photo.astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect"))


def _median(photo: np.ndarray, k: float) -> np.ndarray:
    from scipy.ndimage import median_filter

    return median_filter(photo, size=(int(k), int(k), 1), mode="reflect")


def _bilateral(photo: np.ndarray, sigma_color: float) -> np.ndarray:
    from skimage.restoration import denoise_bilateral

    out = denoise_bilateral(photo, sigma_color=sigma_color / 255.0, sigma_spatial=1.5, channel_axis=-1)
    return _to8(out.reshape(photo.shape) * 255.0)  # skimage drops the axes of a 1-pixel photo


def _nlm(photo: np.ndarray, h: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    x = photo.astype(np.float32) / 255.0
    return _to8(denoise_nl_means(x, h=h / 255.0, patch_size=5, patch_distance=6, fast_mode=True, channel_axis=-1).reshape(photo.shape) * 255.0)


def _down(photo: np.ndarray, f: float) -> np.ndarray:
    from PIL import Image

    h, w = photo.shape[:2]
    small = Image.fromarray(photo).resize((max(1, round(w / f)), max(1, round(h / f))), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BICUBIC)).copy()


def _bits(photo: np.ndarray, b: float) -> np.ndarray:
    step = 2 ** (8 - int(b))
    return (photo // step * step + step // 2).astype(np.uint8)


def _to8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


PURIFIERS = {"jpeg": (_jpeg, (1, 100)), "blur": (_blur, (0.1, 10)), "median": (_median, (2, 15)), "bilateral": (_bilateral, (1, 255)),
             "nlm": (_nlm, (1, 100)), "down": (_down, (1, 16)), "bits": (_bits, (1, 8))}


def parse(spec: str) -> list[tuple[str, float]]:
    """``median:3+jpeg:75`` -> [("median", 3.0), ("jpeg", 75.0)]; ``""`` or ``none``: no step."""
    if spec in ("", "none"):
        return []
    steps = []
    for part in spec.split("+"):
        name, _, value = part.partition(":")
        if name not in PURIFIERS or not value:
            raise ValueError(f"unknown purification {part!r} in {spec!r}: use name:value with a name of {sorted(PURIFIERS)}, "
                             "chained with '+' (e.g. median:3+jpeg:75)")
        lo, hi = PURIFIERS[name][1]
        v = float(value)
        if not lo <= v <= hi or (name in ("median", "bits") and v != int(v)):
            raise ValueError(f"{name}:{value} is out of range: {name} takes {'a whole number ' if name in ('median', 'bits') else ''}from {lo} to {hi}")
        steps.append((name, v))
    return steps


def purify(photo: np.ndarray, spec: str) -> np.ndarray:
    """``photo`` (H, W, 3) uint8 through the chain ``spec``: same shape, uint8."""
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"purify takes an (H, W, 3) uint8 photo, got {photo.shape} {photo.dtype}")
    for name, v in parse(spec):
        photo = PURIFIERS[name][0](photo, v)
    return photo


__all__ = ["PURIFIERS", "parse", "purify"]
