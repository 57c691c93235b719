"""Reading any photo as 8-bit RGB, and writing files so that a kill never leaves half a file."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


class ImageReadError(ValueError):
    """A file that cannot be used as a photo; the message names the file and what to do."""


MAX_PIXELS = 64_000_000  # 64 megapixels: larger photos are refused before decoding


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a photo to RGB uint8 (H, W, 3): EXIF orientation applied; grey, CMYK, palette,
    alpha (composited on white) and 16-bit inputs converted. Photos above ``max_pixels`` are
    refused from their header, before any memory is spent on them."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise ImageReadError(
                    f"{path}: {im.width}x{im.height} pixels is more than the {max_pixels / 1e6:.0f}-megapixel limit; "
                    "downscale it first (faces need only a few hundred pixels)"
                )
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                top = 65535.0 if arr.max() > 255 else 255.0
                im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError as e:
        raise ImageReadError(f"{path}: no such file") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{path}: not an image this tool can read (use JPEG, PNG or WebP)") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: unreadable or damaged image ({e}); re-export or replace it") from e


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encode_image(rgb: np.ndarray, fmt: str = "png", quality: int = 95, exif: bytes | None = None) -> bytes:
    """Encode RGB uint8 as PNG (lossless), JPEG or WebP (``quality``; WebP 100 = lossless).
    Nothing of the source file's metadata is carried unless ``exif`` is given on purpose."""
    fmt = fmt.lower()
    buf = io.BytesIO()
    im = Image.fromarray(rgb)
    extra = {"exif": exif} if exif else {}
    if fmt == "png":
        im.save(buf, format="PNG", **extra)
    elif fmt in ("jpeg", "jpg"):
        im.save(buf, format="JPEG", quality=int(quality), subsampling=0 if quality >= 90 else 2, **extra)
    elif fmt == "webp":
        im.save(buf, format="WEBP", quality=int(quality), lossless=quality >= 100, **extra)
    else:
        raise ValueError(f"unknown output format {fmt!r}: use png, jpeg or webp")
    return buf.getvalue()


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    """Lossless 8-bit PNG with no metadata, written atomically."""
    atomic_write_bytes(path, encode_image(np.asarray(rgb, dtype=np.uint8), "png"))


def append_jsonl(path: str | Path, record: dict) -> None:
    """One whole line per call in a single O_APPEND write, so several processes can share the
    file; a kill can only lose (or tear) the line being written, which readers skip."""
    data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | Path) -> list[dict]:
    """All complete lines of a JSONL file; a torn last line (from a kill) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (or ``root`` itself), sorted, as paths relative to nothing."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
