"""Detect, pick and align faces; align whole folder trees into 112x112 ArcFace crops."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tipim.align.transform import ARCFACE_SIZE, ARCFACE_TEMPLATE, estimate_similarity
from tipim.files import ImageReadError, append_jsonl, list_images, load_rgb, read_jsonl, save_png

MULTI_POLICIES = ("center", "largest", "all", "error")
DETECT_SIZE = 1600  # longest side searched for faces; see FaceAligner.detect


@dataclass
class Face:
    box: list[float]  # x1, y1, x2, y2
    score: float
    landmarks: list[list[float]]  # 5 x 2, photo pixels
    matrix: list[list[float]]  # 2 x 3, photo -> crop
    crop: np.ndarray | None = field(repr=False)  # 112 x 112 x 3 uint8; None when not asked for


def align_matrix(landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> torch.Tensor:
    """The 2x3 photo->crop matrix that puts five landmarks on the ArcFace template."""
    return estimate_similarity(torch.as_tensor(landmarks, dtype=torch.float32), ARCFACE_TEMPLATE * (size / ARCFACE_SIZE))


def align_crop(image: np.ndarray, landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The ArcFace-aligned crop of one face and the 2x3 photo->crop matrix."""
    from tipim.align.paste import crop_faces

    m = align_matrix(landmarks, size)
    crop = crop_faces(image, m[None], size)[0]
    return (crop.permute(1, 2, 0) * 255.0).round().byte().numpy(), m.numpy()


class FaceAligner:
    """MTCNN detection plus the five-point similarity warp.

    ``multi`` says which faces of a photo are kept: ``center`` (the one nearest the photo centre,
    the LFW convention), ``largest``, ``all``, or ``error`` (refuse photos with several faces).
    """

    def __init__(self, multi: str = "center", min_face_size: int = 20, min_score: float = 0.9, detect_size: int = DETECT_SIZE):
        from tipim.align.mtcnn import MTCNN

        if multi not in MULTI_POLICIES:
            raise ValueError(f"multi must be one of {MULTI_POLICIES}, got {multi!r}")
        if detect_size < 0:
            raise ValueError(f"detect_size is a photo side in pixels (0 = full resolution), got {detect_size}")
        self.detector = MTCNN(min_face_size=min_face_size)
        self.multi, self.min_score, self.detect_size = multi, min_score, detect_size

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 5) and landmarks (N, 5, 2) in the photo's pixels. A photo whose longer side
        exceeds ``detect_size`` is searched in a copy downscaled to that side (the cascade's cost
        grows with the pixel count; a 12 MP photo at full resolution takes half a minute on two
        cores), so faces narrower than ``min_face_size * side / detect_size`` are not found."""
        f = self.detect_size / max(image.shape[:2]) if self.detect_size else 1.0
        if f >= 1.0:
            return self._detect(image)
        from PIL import Image

        small = Image.fromarray(image).resize((max(1, round(image.shape[1] * f)), max(1, round(image.shape[0] * f))), Image.BOX)
        boxes, points = self._detect(np.asarray(small))
        sx, sy = image.shape[1] / small.width, image.shape[0] / small.height
        boxes = boxes.copy()
        boxes[:, [0, 2]] *= sx
        boxes[:, [1, 3]] *= sy
        return boxes, points * np.array([sx, sy], np.float32)

    def _detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """When nothing passes, one retry with relaxed cascade thresholds finds the hard cases
        (profile, blur) that the defaults miss."""
        boxes, points = self.detector.detect(image)
        keep = boxes[:, 4] >= self.min_score
        if not keep.any():
            strict = self.detector.thresholds
            self.detector.thresholds = [0.5, 0.6, 0.6]
            try:
                boxes, points = self.detector.detect(image)
            finally:
                self.detector.thresholds = strict
            keep = boxes[:, 4] >= min(self.min_score, 0.8)
        return boxes[keep], points[keep]

    def pick(self, image: np.ndarray, boxes: np.ndarray) -> list[int]:
        if len(boxes) <= 1 or self.multi == "all":
            return list(range(len(boxes)))
        if self.multi == "error":
            return []
        if self.multi == "largest":
            return [int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))]
        h, w = image.shape[:2]
        centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
        return [int(np.argmin(((centres - [w / 2, h / 2]) ** 2).sum(1)))]

    def faces(self, image: np.ndarray, crops: bool = True) -> tuple[list[Face], int]:
        """The kept faces and the number detected. ``crops=False`` leaves ``Face.crop`` out (a
        photo run crops its faces later, through its own view)."""
        boxes, points = self.detect(image)
        out = []
        for i in self.pick(image, boxes):
            if crops:
                crop, m = align_crop(image, points[i])
            else:
                crop, m = None, align_matrix(points[i]).numpy()
            out.append(Face(boxes[i, :4].tolist(), float(boxes[i, 4]), points[i].tolist(), m.tolist(), crop))
        return out, len(boxes)


# ---- folder alignment (tipim data align) -------------------------------------------------------

_worker_aligner: FaceAligner | None = None


def _init_worker(multi: str) -> None:
    global _worker_aligner
    torch.set_num_threads(1)
    _worker_aligner = FaceAligner(multi=multi)


def _align_one(job: tuple[str, str, str]) -> dict:
    src, rel, out_root = job
    rec = dict(source=src, output=None, landmarks=None, box=None, score=None, faces=0, status="ok", error=None)
    try:
        image = load_rgb(src)
        faces, n = _worker_aligner.faces(image)
        rec["faces"] = n
        if n == 0:
            return rec | dict(status="no_face", error=f"{src}: no face found (score >= {_worker_aligner.min_score})")
        if not faces:
            return rec | dict(status="multiple_faces", error=f"{src}: {n} faces found; crop the photo or use --multi center")
        for k, face in enumerate(faces):
            out = Path(out_root) / Path(rel).with_suffix(".png")
            if len(faces) > 1:
                out = out.with_name(f"{out.stem}_face{k}.png")
            save_png(out, face.crop)
            if k == 0:
                rec.update(output=str(out), landmarks=face.landmarks, box=face.box, score=face.score, matrix=face.matrix)
        return rec
    except ImageReadError as e:
        return rec | dict(status="unreadable", error=str(e))
    except Exception as e:  # one bad image never stops the run
        return rec | dict(status="error", error=f"{src}: {type(e).__name__}: {e}")


def align_folder(src: str | Path, out: str | Path, workers: int | None = None, multi: str = "center", progress=True) -> dict:
    """Align every image under ``src`` into ``out`` (same relative paths, PNG) and log each one
    to ``out/alignment.jsonl``. Images already aligned are skipped, so a re-run resumes (and
    retries the ones that failed)."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder; --src takes a folder of <identity>/<image> files")
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "alignment.jsonl"
    latest = {r["source"]: r["status"] for r in read_jsonl(manifest)}  # the last line per source wins
    done = {src for src, status in latest.items() if status == "ok"}
    images = list_images(src)
    jobs = [(str(p), str(p.relative_to(src)), str(out)) for p in images if str(p) not in done]
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    counts: dict[str, int] = {}
    if jobs:
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(multi,)) as pool:
            it: Iterator[dict] = pool.imap_unordered(_align_one, jobs, chunksize=8)
            bar = _progress(len(jobs), "aligning") if progress else None
            for rec in it:
                append_jsonl(manifest, rec)
                counts[rec["status"]] = counts.get(rec["status"], 0) + 1
                if bar:
                    bar.update(1)
            if bar:
                bar.close()
    return dict(images=len(images), skipped=len(images) - len(jobs), counts=counts, manifest=str(manifest))


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", smoothing=0.05)


__all__ = ["Face", "FaceAligner", "align_crop", "align_folder", "align_matrix"]
