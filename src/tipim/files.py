"""Reading any photo as 8-bit RGB, and writing files so that a kill never leaves half a file."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif"}
READABLE = "JPEG, PNG, WebP, HEIC/HEIF, AVIF, BMP, TIFF or a still GIF"
_heif_registered = False


def _register_heif() -> None:
    """HEIC/HEIF (iPhone photos) through pillow-heif; AVIF is read by Pillow itself."""
    global _heif_registered
    if not _heif_registered:
        try:
            from pillow_heif import register_heif_opener
        except ImportError:  # an optional extra on odd platforms; the message below says so
            pass
        else:
            register_heif_opener()
        _heif_registered = True


class ImageReadError(ValueError):
    """A file that cannot be used as a photo; the message names the file and what to do."""


MAX_PIXELS = 64_000_000  # 64 megapixels: larger photos are refused before decoding


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a photo to RGB uint8 (H, W, 3): EXIF orientation applied; grey, CMYK, palette,
    alpha (composited on white) and 16-bit inputs converted. Photos above ``max_pixels`` are
    refused from their header, before any memory is spent on them."""
    path = Path(path)
    _register_heif()
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise ImageReadError(
                    f"{path}: {im.width}x{im.height} pixels is more than the {max_pixels / 1e6:.0f}-megapixel limit; "
                    "downscale it first (faces need only a few hundred pixels)"
                )
            frames = getattr(im, "n_frames", 1)
            if frames > 1 and im.format in ("GIF", "PNG", "WEBP"):  # APNG, animated WebP too
                raise ImageReadError(
                    f"{path}: an animation ({frames} frames); only still photos are protected: export the frame you want as PNG or JPEG"
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
            return np.array(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)  # one writable copy
    except ImageReadError:
        raise
    except FileNotFoundError as e:
        raise ImageReadError(f"{path}: no such file") from e
    except PermissionError as e:
        raise ImageReadError(f"{path}: permission denied; make the file readable (chmod u+r) or run as its owner") from e
    except IsADirectoryError as e:
        raise ImageReadError(f"{path}: a folder, not a photo; pass the folder itself to protect what it holds") from e
    except UnidentifiedImageError as e:
        heif = "" if path.suffix.lower() not in (".heic", ".heif") or _heif_available() else " (HEIC needs: pip install pillow-heif)"
        raise ImageReadError(f"{path}: not an image this tool can read{heif}; convert it to {READABLE}") from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageReadError(f"{path}: a symbolic link that points to itself (a loop); fix or remove the link") from e
        raise ImageReadError(f"{path}: unreadable or damaged image ({e}); re-export or replace it") from e
    except Image.DecompressionBombError as e:  # Pillow's own guard, from the header, above ours
        raise ImageReadError(
            f"{path}: its header claims more pixels than the {max_pixels / 1e6:.0f}-megapixel limit; "
            "downscale it first (faces need only a few hundred pixels)"
        ) from e
    except (SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: unreadable or damaged image ({e}); re-export or replace it") from e


def _heif_available() -> bool:
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return False
    return True


def crash_point(name: str) -> None:
    """Fault injection for the resume tests: ``TIPIM_CRASH_AT=name:n`` kills this process
    (SIGKILL, nothing cleaned up) the n-th time ``name`` is reached, so a test kills a run at
    a known point instead of after a sleep. Unset, it does nothing."""
    spec = os.environ.get("TIPIM_CRASH_AT")
    if not spec or not spec.startswith(name + ":"):
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] >= int(spec.rsplit(":", 1)[1]):
        os.kill(os.getpid(), signal.SIGKILL)


_crash_counts: dict[str, int] = {}
PART_SUFFIX = ".part"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PART_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        crash_point("before_rename")
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
    if fmt == "png":  # zlib level 3: 2.2-2.7x faster than PIL's 6 on 2-4 MP photos for 5-24% larger files;
        # level 1 above 4 MP: a 41-MP photo in 2.0 s instead of 3.3 s, for a 10% larger file
        im.save(buf, format="PNG", compress_level=3 if rgb.shape[0] * rgb.shape[1] <= 4_000_000 else 1, **extra)
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


class OutputBusyError(RuntimeError):
    """Another run holds the output folder, or the folder cannot be written."""


LOCK_NAME = ".tipim.lock"  # also marks a folder as a tipim run: never scanned as input


class RunLock:
    """An exclusive lock on a run folder for as long as this process lives: a second run on the
    same folder stops with a clear message instead of interleaving its manifest lines. An
    ``flock`` dies with its process, so a killed run leaves no stale lock behind."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputBusyError(f"{self.folder}: cannot write the output folder ({e.strerror}); choose another --out or fix its permissions") from e
        try:
            import fcntl
        except ImportError:  # Windows: no flock; runs are not guarded there
            self._fd = fd
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputBusyError(
                f"{self.folder}: another tipim run (pid {holder}) is writing to this folder; wait for it to finish or choose another --out"
            ) from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def remove_partials(folder: str | Path) -> list[Path]:
    """Temporary files that a killed writer left (``.<name>.<random>.part``); call it only while
    holding the folder's RunLock, so no live writer's file is taken."""
    found = [p for p in Path(folder).rglob(f".*{PART_SUFFIX}") if p.is_file()]
    for p in found:
        p.unlink(missing_ok=True)
    return found


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (or ``root`` itself), sorted, as paths relative to nothing."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
