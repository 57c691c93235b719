"""Whole photos in, protected photos out: detect every face, align it, mask it, warp the mask
back over that face only, write a photo of the original size.

The faces of a batch of photos are flattened into one batch of aligned crops, so the same
``ProtectionModule.predict_step`` protects crops and photos; the photo writer pastes the masks
back, checks the 8-bit bound on the full photo, re-crops the written photo to check that the
protection survived the round trip, and writes one manifest line per photo with one entry per
face.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from tipim.align.aligner import DETECT_SIZE
from tipim.align.paste import face_region, region_matrix
from tipim.attack.objectives import surrogate_success
from tipim.inputs import Ignored, PhotoItem, describe_ignored, find_photos
from tipim.io import MAX_PIXELS, READABLE, ImageReadError, append_jsonl, atomic_write_bytes, encode_image, load_rgb, read_jsonl
from tipim.lightning.callbacks import ManifestWriter, RunProgress
from tipim.lightning.data import ShardedBatches, by_device, load_targets, seeded_subset

FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
NO_FACE_HINT = "no face found; use a photo where the face is visible and at least ~40 pixels wide"


class PhotoFolder(Dataset):
    """Decodes a photo and aligns all its faces; problems become an ``error`` for the writer."""

    def __init__(self, items: list[PhotoItem], multi: str = "all", max_pixels: int = MAX_PIXELS, detect_size: int = DETECT_SIZE):
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
        item = self.items[i]
        row = {"id": item.id, "source": item.path, "photo": None, "regions": [], "rects": [], "matrices": torch.zeros(0, 2, 3),
               "region_matrices": torch.zeros(0, 2, 3), "boxes": [], "error": "", "status": "ok"}
        try:
            photo = load_rgb(item.path, self.max_pixels)
        except ImageReadError as e:
            return row | {"error": str(e), "status": "unreadable"}
        h, w = photo.shape[:2]
        if min(h, w) < self.aligner().detector.min_face_size:  # smaller than the smallest face it finds
            return row | {"error": f"{item.path}: only {w}x{h} pixels, too small to hold a face; use the original photo", "status": "no_face"}
        try:
            faces, _ = self.aligner().faces(photo)
        except Exception as e:  # a detector failure on one photo never stops the run
            return row | {"error": f"{item.path}: face detection failed ({type(e).__name__}: {e}); please report this photo", "status": "error"}
        if not faces:
            return row | {"photo": photo, "error": f"{item.path}: {NO_FACE_HINT}", "status": "no_face"}
        rects = [face_region(f.matrix, h, w) for f in faces]
        regions = [torch.from_numpy(photo[y0:y1, x0:x1]).permute(2, 0, 1).contiguous() for x0, y0, x1, y1 in rects]
        return row | {"photo": photo, "regions": regions, "rects": rects, "matrices": torch.tensor([f.matrix for f in faces]),
                      "region_matrices": torch.stack([region_matrix(f.matrix, r[0], r[1]) for f, r in zip(faces, rects)]).float(),
                      "boxes": [[round(v, 1) for v in f.box] for f in faces]}


def collate_photos(rows: list[dict]) -> dict:
    """The faces of a batch of photos as one batch of photo regions (ids ``photo#k``), padded to
    the largest; ``view_matrices``/``view_sizes`` let ``CropView`` show each as its aligned crop."""
    ids, sources, regions = [], [], []
    for r in rows:
        ids += [f"{r['id']}#{k}" for k in range(len(r["regions"]))]
        sources += [r["source"]] * len(r["regions"])
        regions += r["regions"]
    h = max((x.shape[1] for x in regions), default=112)
    w = max((x.shape[2] for x in regions), default=112)
    image = torch.zeros(len(regions), 3, h, w)
    for i, x in enumerate(regions):
        image[i, :, : x.shape[1], : x.shape[2]] = x.float() / 255.0
    return {"id": ids, "source": sources, "error": [""] * len(ids), "image": image, "photos": rows,
            "view_matrices": torch.cat([r["region_matrices"] for r in rows]),
            "view_sizes": torch.tensor([[x.shape[1], x.shape[2]] for x in regions], dtype=torch.long).view(-1, 2)}


class PhotoDataModule(L.LightningDataModule):
    """Photos to protect (files, folders, or a protocol's probe photos) and the target identities.

    Args:
        photos: photo files and/or folders (JPEG, PNG, WebP, ...), or a ``protocol.json``.
        targets: a folder with one aligned face per target identity, or a ``protocol.json``.
        output_dir: the run folder; photos already ``ok`` in its ``manifest.jsonl`` are skipped.
        batch_size: photos per batch (their faces are protected together); None: 1 on a CPU, 16 on
            an accelerator. The masks do not depend on it.
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

    def __init__(
        self,
        photos: list[str],
        targets: str,
        output_dir: str = "runs/photos",
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
        super().__init__()
        if output_format not in FORMATS:
            raise ValueError(f"output_format must be one of {sorted(FORMATS)}, got {output_format!r}")
        self.photos, self.targets, self.output_dir, self.root = photos, targets, output_dir, root
        self.batch_size, self.num_workers, self.multi = batch_size, num_workers, multi
        self.output_format, self.quality, self.keep_metadata, self.max_pixels = output_format, quality, keep_metadata, max_pixels
        self.limit, self.limit_seed, self.check, self.detect_size = limit, limit_seed, check, detect_size
        self.items: list[PhotoItem] = []
        self.ignored: list[Ignored] = []
        self.target_names: list[str] = []
        self.target_images: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        found, self.ignored = find_photos(self.photos, self.root, exclude=[self.output_dir])
        self.items = seeded_subset(found, self.limit, self.limit_seed)
        if not self.items:
            why = describe_ignored(self.ignored)
            raise ValueError(f"no photos in {' '.join(map(str, self.photos))}" + (f" ({why})" if why else "") + f"; photos must be {READABLE} files")
        for i in self.ignored[:5]:
            _say(f"{i.path}: {i.reason}", "not read")
        if len(self.ignored) > 5:
            _say(f"{len(self.ignored) - 5} more files (counted in the summary)", "not read")
        self.target_names, self.target_images = load_targets(self.targets, self.root)

    def output_callbacks(self) -> list[Callback]:
        """What ProtectionModule.configure_callbacks uses instead of its crop writer."""
        return [ProtectedPhotoWriter(self.output_dir, self.output_format, self.quality, self.keep_metadata, self.check), RunProgress("photo")]

    def predict_dataloader(self) -> DataLoader:
        done = {r["id"] for r in read_jsonl(Path(self.output_dir) / "manifest.jsonl") if r.get("status") == "ok"}
        done_idx = {i for i, it in enumerate(self.items) if it.id in done}
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        batch = self.batch_size if self.batch_size is not None else by_device(self.trainer, 1, 16)
        sampler = ShardedBatches(len(self.items), batch, done_idx, rank, world)
        return DataLoader(PhotoFolder(self.items, self.multi, self.max_pixels, self.detect_size), batch_sampler=sampler, num_workers=self.num_workers, collate_fn=collate_photos)


def _exif_kept(source: str) -> bytes | None:
    """The source's EXIF with the orientation reset (the pixels are already upright)."""
    with Image.open(source) as im:
        exif = im.getexif()
        if not exif:
            return None
        exif[0x0112] = 1
        return exif.tobytes()


class ProtectedPhotoWriter(ManifestWriter):
    """Pastes each face's mask back into its photo and writes the photo (atomically), then one
    manifest line per photo. ``linf`` is measured on the written file (PNG, lossless WebP: the
    bound holds exactly; JPEG/lossy WebP: the codec's own error is added on top, and
    ``linf_before_encoding`` is the bound that holds). ``faces[k].surrogate_success`` is
    measured on the written photo re-cropped with the same alignment; ``faces[k].independent``
    by models that did not make the mask, on the face detected again in the written file."""

    def __init__(self, output_dir: str, output_format: str = "png", quality: int = 95, keep_metadata: bool = False, check: str | list[str] = "auto"):
        super().__init__(output_dir)
        self.output_format, self.quality, self.keep_metadata, self.check = output_format, quality, keep_metadata, check
        self.checker = None

    def on_predict_start(self, trainer, pl_module) -> None:
        from tipim.evaluation.selfcheck import IndependentCheck, independent_models

        names = independent_models(pl_module.surrogate_names, self.check)
        self.checker = IndependentCheck(names, pl_module.device) if names else None

    @torch.no_grad()
    def _check(self, pl_module, protected: np.ndarray, original: torch.Tensor, matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Surrogate distances of the written faces, cropped as the aligner crops them
        (``original``: the unprotected crops, same way)."""
        from tipim.align.paste import crop_faces
        from tipim.attack import judge

        att = pl_module.attack
        dev = pl_module.target_embeddings.device
        e_p = att.embed(crop_faces(protected, matrices).to(dev))
        d_r, d_t, t = judge(e_p, att.embed(original.to(dev)), pl_module.target_embeddings, att.metric)
        return d_r.cpu(), d_t.cpu(), t.cpu()

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        from tipim.align.paste import crop_faces, paste_regions

        eps = int(pl_module.eps_8bit) if pl_module.eps_8bit is not None else None
        k = 0
        for photo in prediction["photos"]:
            n = len(photo["regions"])
            sl = slice(k, k + n)
            k += n
            rec = {"id": photo["id"], "source": photo["source"], "output": None, "method": pl_module.method,
                   "surrogates": pl_module.surrogate_names, "eps": eps, "steps": pl_module.steps, "seed": pl_module.seed,
                   "rank": trainer.global_rank, "format": self.output_format, "faces": []}
            if photo["id"] in self.done:
                continue
            if photo["error"]:
                append_jsonl(self.manifest, rec | {"status": photo["status"], "error": photo["error"]})
                _say(photo["error"])
                continue
            out = self.output_dir / "images" / f"{photo['id']}{FORMATS[self.output_format]}"
            try:
                if eps is None:
                    raise ValueError("photos need an L-inf bound (norm: linf)")
                x_r, x_p, m = prediction["x_r"][sl], prediction["x_p"][sl], photo["matrices"].cpu()  # Lightning moved the batch
                protected, _ = paste_regions(photo["photo"], x_r, x_p, photo["rects"], eps)
                exif = _exif_kept(photo["source"]) if self.keep_metadata else None
                atomic_write_bytes(out, encode_image(protected, self.output_format, self.quality, exif))
                src = photo["photo"].astype(np.int16)
                written = load_rgb(out).astype(np.int16)
                linf = int(np.abs(written - src).max())
                lossless = self.output_format == "png" or (self.output_format == "webp" and self.quality >= 100)
                if lossless and linf > eps:
                    raise RuntimeError(f"{out}: written pixels differ by {linf} > eps {eps} levels; refusing to keep it")
                written8, original = written.astype(np.uint8), crop_faces(photo["photo"], m)
                d_r, d_t, t = self._check(pl_module, written8, original, m)
                faces = [{"box": photo["boxes"][j], "region": list(photo["rects"][j]), "target": pl_module.target_names[int(t[j])],
                          "surrogate_d_r": round(float(d_r[j]), 5), "surrogate_d_t": round(float(d_t[j]), 5),
                          "surrogate_success": bool(surrogate_success(d_t[j], d_r[j]))} for j in range(n)]
                if self.checker is not None:
                    clean = (original * 255).round().to(torch.uint8)
                    for face, verdict in zip(faces, self.checker(written8, clean, photo["boxes"])):
                        face["independent"] = verdict
                    rec["check_models"] = self.checker.names
                rec |= {"output": str(out.relative_to(self.output_dir)), "faces": faces, "linf": linf,
                        "linf_before_encoding": int(np.abs(protected.astype(np.int16) - src).max()), "status": "ok", "error": None}
            except Exception as e:  # one photo never stops the run
                out.unlink(missing_ok=True)
                rec |= {"status": "error", "error": f"{photo['source']}: {type(e).__name__}: {e}"}
            append_jsonl(self.manifest, rec)
            if rec["status"] == "ok":
                self.done.add(photo["id"])
            else:
                _say(rec["error"])


def _say(message: str, what: str = "skipped") -> None:
    """A problem with one photo, printed above the progress bar; the run goes on."""
    from tqdm.auto import tqdm

    tqdm.write(f"{what}: {message}", file=sys.stderr)


__all__ = ["PhotoDataModule", "PhotoFolder", "ProtectedPhotoWriter", "collate_photos"]
