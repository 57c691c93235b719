"""Protected photos out: each face's mask pasted back into its photo, the photo written
atomically at its original size, the 8-bit bound checked on the written file, and one manifest
line per photo with one entry per face (the surrogate's verdict on the written file, and the
independent self-check).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from tipim.attack.objectives import surrogate_success
from tipim.files import append_jsonl, atomic_write_bytes, encode_image, load_rgb
from tipim.lightning.callbacks import ManifestWriter

FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


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

    def __init__(self, output_dir: str, output_format: str = "png", quality: int = 95, keep_metadata: bool = False, check: str | list[str] = "auto",
                 progress=None):
        super().__init__(output_dir)
        self.progress = progress  # a RunProgress over photos: advanced as each photo is written
        self.output_format, self.quality, self.keep_metadata, self.check = output_format, quality, keep_metadata, check
        self.checker = None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="tipim-encode")
        self.writer, self.pending = None, None

    # On an accelerator a batch's photos are written (pasted, encoded, checked) by a thread while
    # the next batch is attacked; one batch in flight at a time, so memory holds at most two. On a
    # CPU they are written in turn: the attack already keeps the cores busy, and a second thread's
    # network passes made an album on 2 cores 20% slower (1.91-1.99 against 1.60-1.62 s per photo).
    overlap: bool | None = None  # None: on an accelerator only

    def on_predict_start(self, trainer, pl_module) -> None:
        from tipim.evaluation.selfcheck import IndependentCheck, independent_models

        names = independent_models(pl_module.surrogate_names, self.check)
        self.checker = IndependentCheck(names, pl_module.device) if names else None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        overlap = self.overlap if self.overlap is not None else pl_module.device.type != "cpu"
        if not overlap or pl_module.attack.compiled:  # a compiled network is not called from two threads
            return self._write_batch(trainer, pl_module, prediction)
        self.wait()
        if self.writer is None:
            self.writer = ThreadPoolExecutor(1, thread_name_prefix="tipim-write")
        self.pending = self.writer.submit(self._write_batch, trainer, pl_module, prediction)

    def wait(self) -> None:
        """Until the batch being written is written (an unexpected error there is raised here)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def _close(self) -> None:
        try:
            self.wait()
        finally:
            if self.writer is not None:
                self.writer.shutdown()
                self.writer = None

    def on_predict_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        try:  # keep what is finished: its photos are written and logged before the run stops
            self._close()
        except Exception as e:
            say(f"while stopping: {type(e).__name__}: {e}", "not written")

    @torch.no_grad()
    def _write_batch(self, trainer, pl_module, prediction: dict) -> None:
        if pl_module.device.type == "cuda":  # a new thread starts on cuda:0, not on this process's device
            torch.cuda.set_device(pl_module.device)
        eps = int(pl_module.eps_levels) if pl_module.eps_levels is not None else None
        k = 0
        for photo in prediction["photos"]:
            n = photo["faces"]
            self._write_photo(trainer, pl_module, prediction, photo, slice(k, k + n), eps)
            k += n
            if self.progress is not None:
                self.progress.photo_done()

    def _write_photo(self, trainer, pl_module, prediction: dict, photo: dict, sl: slice, eps: int | None) -> None:
        from tipim.align.paste import paste_regions, protect_region

        n = sl.stop - sl.start
        rec = {"id": photo["id"], "source": photo["source"], "output": None, "method": pl_module.method,
               "surrogates": pl_module.surrogate_names, "eps_levels": eps, "steps": pl_module.steps, "seed": pl_module.seed,
               "rank": trainer.global_rank, "format": self.output_format, "faces": []}
        if photo["id"] in self.done:
            return
        if photo["error"]:
            append_jsonl(self.manifest, rec | {"status": photo["status"], "error": photo["error"]})
            say(photo["error"])
            return
        out = self.output_dir / "images" / f"{photo['id']}{FORMATS[self.output_format]}"
        job, start = None, time.perf_counter()
        try:
            if eps is None:
                raise ValueError("photos need an L-inf bound (norm: linf)")
            src, m = photo["photo"], photo["matrices"].cpu()  # Lightning moved the batch
            regions_r, regions_p = [], []
            for (x0, y0, x1, y1), s, x_r, x_p, mask in zip(photo["rects"], prediction["grids"][sl], prediction["x_r"][sl],
                                                           prediction["x_p"][sl], prediction["mask"][sl]):
                if s > 1:  # a mask grid: the mask upsampled onto the region's photo pixels
                    x_r = torch.from_numpy(src[y0:y1, x0:x1]).permute(2, 0, 1)
                    x_p = protect_region(x_r, mask, s)
                regions_r.append(x_r)
                regions_p.append(x_p)
            protected = paste_regions(src, regions_r, regions_p, photo["rects"], eps)
            del regions_r, regions_p
            linf_before = max_change(protected, src)
            exif = _exif_kept(photo["source"]) if self.keep_metadata else None
            lossless = self.output_format == "png" or (self.output_format == "webp" and self.quality >= 100)
            # encode, write and read back in a thread (zlib and the decoder release the GIL); a lossless
            # file holds exactly ``protected``, so the checks below run on it meanwhile
            job = self.pool.submit(self._write_and_read, out, protected, exif)
            written = protected if lossless else job.result()
            faces = self._verdicts(pl_module, photo, src, written, m)
            reread = job.result()
            if lossless and not np.array_equal(reread, protected):
                raise RuntimeError(f"{out}: the file read back differs from the pixels written; refusing to keep it")
            linf = linf_before if lossless else max_change(reread, src)  # lossless: the file holds exactly ``protected``
            if lossless and linf > eps:
                raise RuntimeError(f"{out}: written pixels differ by {linf} > eps {eps} levels; refusing to keep it")
            del protected, written, reread
            if self.checker is not None:
                rec["check_models"] = self.checker.names
            share = prediction["seconds"] * n / max(len(prediction["id"]), 1)  # its faces' share of the batch's attack
            seconds = {"load": photo["load_seconds"], "attack": share, "write": time.perf_counter() - start}
            rec |= {"output": str(out.relative_to(self.output_dir)), "faces": faces, "linf": linf,
                    "linf_before_encoding": linf_before, "seconds": {k: round(v, 3) for k, v in seconds.items()}, "status": "ok", "error": None}
        except Exception as e:  # one photo never stops the run
            if job is not None:
                job.exception()  # the file is finished (or failed) before it is removed
            out.unlink(missing_ok=True)
            rec |= {"status": "error", "error": f"{photo['source']}: {type(e).__name__}: {e}"}
        append_jsonl(self.manifest, rec)
        if rec["status"] == "ok":
            self.done.add(photo["id"])
        else:
            say(rec["error"])

    def _write_and_read(self, out, protected: np.ndarray, exif: bytes | None) -> np.ndarray:
        atomic_write_bytes(out, encode_image(protected, self.output_format, self.quality, exif))
        return load_rgb(out)

    def _verdicts(self, pl_module, photo: dict, src: np.ndarray, written: np.ndarray, m: torch.Tensor) -> list[dict]:
        """Per face: the surrogate's verdict on the written photo re-cropped with the same
        alignment, and the independent self-check on the face detected again."""
        from tipim.align.paste import crop_faces

        original = crop_faces(src, m)
        d_r, d_t, t = pl_module.judge_crops(crop_faces(written, m), original)  # cropped as the aligner crops
        faces = [{"box": photo["boxes"][j], "region": list(photo["rects"][j]), "target": pl_module.target_names[int(t[j])],
                  "surrogate_d_r": round(float(d_r[j]), 5), "surrogate_d_t": round(float(d_t[j]), 5),
                  "surrogate_success": bool(surrogate_success(d_t[j], d_r[j]))} for j in range(len(m))]
        if self.checker is not None:
            clean = (original * 255).round().to(torch.uint8)
            for face, verdict in zip(faces, self.checker(written, clean, photo["boxes"])):
                face["independent"] = verdict
        return faces


def max_change(a: np.ndarray, b: np.ndarray, rows: int = 256) -> int:
    """max |a - b| over two uint8 photos, in uint8 a band of rows at a time (no full-size copies)."""
    if a.shape != b.shape:
        raise ValueError(f"the written photo is {a.shape[1]}x{a.shape[0]}, the original {b.shape[1]}x{b.shape[0]}")
    return max((int((np.maximum(a[i : i + rows], b[i : i + rows]) - np.minimum(a[i : i + rows], b[i : i + rows])).max()) for i in range(0, len(a), rows)), default=0)


def say(message: str, what: str = "skipped") -> None:
    """A problem with one photo, printed above the progress bar; the run goes on."""
    from tqdm.auto import tqdm

    tqdm.write(f"{what}: {message}", file=sys.stderr)


__all__ = ["FORMATS", "ProtectedPhotoWriter", "max_change", "say"]
