"""Reading any photo as 8-bit RGB, and writing files so that a kill never leaves half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


class ImageReadError(ValueError):
    """A file that cannot be used as a photo; the message names the file and what to do."""


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode a photo to RGB uint8 (H, W, 3): EXIF orientation applied; grey, CMYK, palette,
    alpha (composited on white) and 16-bit inputs converted."""
    path = Path(path)
    try:
        with Image.open(path) as im:
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


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    """Lossless 8-bit PNG with no metadata, written atomically."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


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
