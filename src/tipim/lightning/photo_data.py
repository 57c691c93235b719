"""Photos in: find them, decode and detect every face in a worker, and deal batches of photos
to the processes. The faces of a batch of photos become one ``PhotoBatch`` of mask variables, so
the same ``ProtectionModule.predict_step`` protects crops and photos; ``photo_writer`` writes them
back.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Dataset

from tipim.align.aligner import DETECT_SIZE
from tipim.align.paste import face_region, grid_matrix, mask_grid_factor, region_matrix, to_grid
from tipim.inputs import Ignored, Item, describe_ignored, find_photos
from tipim.files import MAX_PIXELS, READABLE, ImageReadError, load_rgb, read_jsonl
from tipim.lightning.batches import PhotoBatch
from tipim.lightning.callbacks import RunProgress
from tipim.lightning.data import RunData
from tipim.lightning.photo_writer import FORMATS, ProtectedPhotoWriter, say

NO_PHOTOS = "no photos given: tipim protect PHOTO... (tipim protect --help)"
NO_FACE_HINT = "no face found; use a photo where the face is visible and at least ~40 pixels wide"


class PhotoFolder(Dataset):
    """Decodes a photo and aligns all its faces; problems become an ``error`` for the writer."""

    def __init__(self, items: list[Item], multi: str = "all", max_pixels: int = MAX_PIXELS, detect_size: int = DETECT_SIZE):
        self.items, self.multi, self.max_pixels, self.detect_size = items, multi, max_pixels, detect_size
        self._aligner = None

    def __len__(self) -> int:
        return len(self.items)

    def aligner(self):
        if self._aligner is None:  # one per worker process
            from tipim.align.aligner import FaceAligner

            self._aligner = FaceAligner(multi=self.multi, detect_size=self.detect_size)
        return self._aligner

    def __getitem__(self, i: int) -> dict:
        start = time.perf_counter()
        row = self._load(self.items[i])
        return row | {"load_seconds": time.perf_counter() - start}

    def _load(self, item: Item) -> dict:
        row = {"id": item.id, "source": item.path, "photo": None, "regions": [], "rects": [], "grids": [], "matrices": torch.zeros(0, 2, 3),
               "region_matrices": torch.zeros(0, 2, 3), "boxes": [], "error": "", "status": "ok"}
        try:
            photo = load_rgb(item.path, self.max_pixels)
        except ImageReadError as e:
            return row | {"error": str(e), "status": "unreadable"}
        h, w = photo.shape[:2]
        if min(h, w) < self.aligner().detector.min_face_size:  # smaller than the smallest face it finds
            return row | {"error": f"{item.path}: only {w}x{h} pixels, too small to hold a face; use the original photo", "status": "no_face"}
        try:
            faces, _ = self.aligner().faces(photo, crops=False)  # cropped once, later, through the mask variable's view
        except Exception as e:  # a detector failure on one photo never stops the run
            return row | {"error": f"{item.path}: face detection failed ({type(e).__name__}: {e}); please report this photo", "status": "error"}
        if not faces:
            return row | {"photo": photo, "error": f"{item.path}: {NO_FACE_HINT}", "status": "no_face"}
        rects = [face_region(f.matrix, h, w) for f in faces]
        grids = [mask_grid_factor(f.matrix) for f in faces]
        # each face's mask variable: its region's pixels, or its mask grid (box averages) for a large face
        regions = [to_grid(torch.from_numpy(photo[y0:y1, x0:x1]).permute(2, 0, 1), s) for (x0, y0, x1, y1), s in zip(rects, grids)]
        view = [grid_matrix(region_matrix(f.matrix, r[0], r[1]), s) for f, r, s in zip(faces, rects, grids)]
        return row | {"photo": photo, "regions": regions, "rects": rects, "grids": grids, "matrices": torch.tensor([f.matrix for f in faces]),
                      "region_matrices": torch.stack(view).float(), "boxes": [[round(v, 1) for v in f.box] for f in faces]}


def collate_photos(rows: list[dict]) -> PhotoBatch:
    ids, sources, regions, photos = [], [], [], []
    for r in rows:
        ids += [f"{r['id']}#{k}" for k in range(len(r["regions"]))]
        sources += [r["source"]] * len(r["regions"])
        regions += r["regions"]
        photos.append({k: v for k, v in r.items() if k != "regions"} | {"faces": len(r["regions"])})
    return PhotoBatch(ids, sources, [""] * len(ids), regions, photos, torch.cat([r["region_matrices"] for r in rows]),
                      torch.tensor([[x.shape[1], x.shape[2]] for x in regions], dtype=torch.long).view(-1, 2), [s for r in rows for s in r["grids"]])


class PhotoDataModule(RunData):
    """Photos to protect (files, folders, or a protocol's probe photos) and the target identities.

    Args:
        photos: photo files and/or folders (JPEG, PNG, WebP, ...), or a ``protocol.json``.
        targets: a folder with one aligned face per target identity, or a ``protocol.json``;
            None: the packaged team photo's 10 faces (``tipim.demo.default_targets``).
        output_dir: the run folder; photos already ``ok`` in its ``manifest.jsonl`` are skipped.
        batch_size: photos per batch (their faces are protected together); None: 4 on a CPU, 16 on
            an accelerator. The masks do not depend on it (up to float32 rounding).
        num_workers: decoding/detection workers per process.
        multi: which faces of a photo to protect: ``all`` (default), ``largest``, ``center``.
        output_format: ``png`` (lossless, default), ``jpeg`` or ``webp``.
        quality: JPEG/WebP quality (WebP 100 = lossless).
        keep_metadata: keep the source's EXIF (location included); off by default.
        root: where a protocol's relative paths start.
        max_pixels: larger photos are refused with a message.
        check: after writing, re-detect each face and ask zoo models that did not make its mask
            whether they still recognise it: ``auto`` (every fetched one), ``none``, or names.
        detect_size: faces are searched in a copy downscaled to this longer side (0 = full
            resolution; see ``FaceAligner.detect``); masks are still made in full-resolution pixels.
    """

    # photos per batch on a CPU, on an accelerator. On 2 CPU cores a face alone leaves the second
    # core idle through the network's small operations: an album of 8 portraits took 1.85-1.87 s
    # per photo at 4 per batch against 2.28-2.33 at 1 (balanced; protection unchanged:
    # results/photo_transfer/album_batch).
    default_batch = (4, 16)

    def __init__(
        self,
        photos: list[str] | None = None,
        targets: str | None = None,
        output_dir: str = "protected",
        batch_size: int | None = None,
        num_workers: int = 0,
        multi: str = "all",
        output_format: str = "png",
        quality: int = 95,
        keep_metadata: bool = False,
        root: str | None = None,
        max_pixels: int = MAX_PIXELS,
        limit: int | None = None,
        limit_seed: int = 0,
        check: str | list[str] = "auto",
        detect_size: int = DETECT_SIZE,
    ):
        super().__init__(targets, output_dir, batch_size, num_workers, limit, limit_seed, root)
        if output_format not in FORMATS:
            raise ValueError(f"output_format must be one of {sorted(FORMATS)}, got {output_format!r}")
        self.photos, self.multi = photos, multi
        self.output_format, self.quality, self.keep_metadata, self.max_pixels = output_format, quality, keep_metadata, max_pixels
        self.check, self.detect_size = check, detect_size
        self.ignored: list[Ignored] = []

    def setup(self, stage: str | None = None) -> None:
        if self.targets is None:
            from tipim.demo import default_targets

            self.targets = str(default_targets())
        super().setup(stage)

    def find(self) -> list[Item]:
        if not self.photos:
            raise ValueError(NO_PHOTOS)
        found, self.ignored = find_photos(self.photos, self.root, exclude=[self.output_dir])
        if not found:
            why = describe_ignored(self.ignored)
            raise ValueError(f"no photos in {' '.join(map(str, self.photos))}" + (f" ({why})" if why else "") + f"; photos must be image files: {READABLE}")
        for i in self.ignored[:5]:
            say(f"{i.path}: {i.reason}", "not read")
        if len(self.ignored) > 5:
            say(f"{len(self.ignored) - 5} more files (counted in the summary)", "not read")
        return found

    def dataset(self) -> Dataset:
        return PhotoFolder(self.items, self.multi, self.max_pixels, self.detect_size)

    def collate(self, rows: list[dict]) -> PhotoBatch:
        return collate_photos(rows)

    def summary(self) -> tuple[str, int]:
        latest = {r["id"]: r for r in read_jsonl(self.manifest)}
        ok = [r for r in latest.values() if r["status"] == "ok"]
        failed = [r for r in latest.values() if r["status"] != "ok"]
        faces = sum(len(r["faces"]) for r in ok)
        fooled = sum(f["surrogate_success"] for r in ok for f in r["faces"])
        kinds = Counter(r["status"] for r in failed)
        why = f" ({', '.join(f'{n} {k.replace(chr(95), chr(32))}' for k, n in sorted(kinds.items()))})" if kinds else ""
        mask = max((r["linf_before_encoding"] for r in ok), default=0)
        decoded = max((r["linf"] for r in ok), default=0)
        codec = f" (the lossy codec adds its own error: up to {decoded}/255 in the decoded file)" if decoded > mask else ""
        from tipim.evaluation.selfcheck import describe

        skipped = describe_ignored(self.ignored)
        checked = [f["independent"] for r in ok for f in r["faces"] if "independent" in f]
        models = next((r["check_models"] for r in ok if r.get("check_models")), [])
        parts = [f"{len(latest)} photos, {faces} faces: {len(ok)} photos protected, {len(failed)} failed{why}", skipped]
        if faces:
            parts.append(f"{fooled}/{faces} faces now closer to a target than to themselves on the surrogate")
            parts.append(describe(checked, models))
            parts.append(f"max pixel change {mask}/255{codec}")
        line = "; ".join(p for p in parts if p) + f". Outputs: {Path(self.output_dir) / 'images'}, log: {self.manifest}"
        return line, len(failed)

    def output_callbacks(self) -> list[Callback]:
        progress = RunProgress("photo")
        return [ProtectedPhotoWriter(self.output_dir, self.output_format, self.quality, self.keep_metadata, self.check, progress), progress]


__all__ = ["PhotoDataModule", "PhotoFolder", "collate_photos"]
