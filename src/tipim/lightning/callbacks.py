"""Side effects of a protection run, as callbacks: files on disk and statistics in the logger."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback

from tipim.attack.objectives import surrogate_success
from tipim.files import append_jsonl, atomic_write_bytes, encode_image, load_rgb


class ManifestWriter(BasePredictionWriter):
    """A run folder with a ``manifest.jsonl``; ids already ``ok`` there are never written twice."""

    def __init__(self, output_dir: str):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.done: set[str] = set()

    @property
    def manifest(self) -> Path:
        return self.output_dir / "manifest.jsonl"

    def setup(self, trainer, pl_module, stage=None) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.done = set(trainer.datamodule.done)  # read from the manifest by the run's data (``RunData.setup``)


class ProtectedImageWriter(ManifestWriter):
    """Writes each protected face as a lossless PNG (atomically) and one ``manifest.jsonl`` line
    per face. ``linf`` is measured on the written file against the input file, in 8-bit levels.
    Ids already ``ok`` in the manifest are never written twice (a resumed batch re-runs whole so
    that its MMD term is the same, but only its missing faces are written)."""

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        k = 0
        eps = pl_module.eps_levels
        for i, face_id in enumerate(prediction["id"]):
            rec = {
                "id": face_id,
                "source": prediction["source"][i],
                "output": None,
                "method": pl_module.method,
                "surrogates": pl_module.surrogate_names,
                "eps_levels": eps,
                "steps": pl_module.steps,
                "seed": pl_module.seed,
                "rank": trainer.global_rank,
            }
            if not prediction["ok"][i]:
                append_jsonl(self.manifest, rec | {"status": "error", "error": prediction["error"][i]})
                continue
            j, k = k, k + 1
            if face_id in self.done:
                continue
            out = self.output_dir / "images" / f"{face_id}.png"
            try:
                atomic_write_bytes(out, encode_image(prediction["x_p"][j].permute(1, 2, 0).numpy()))
                written = load_rgb(out).astype(np.int16)
                linf = int(np.abs(written - load_rgb(rec["source"]).astype(np.int16)).max())
                if eps is not None and linf > eps:
                    raise RuntimeError(f"{out}: written pixels differ by {linf} > eps {eps} levels; refusing to keep it")
                rec |= {
                    "output": str(out.relative_to(self.output_dir)),
                    "target": prediction["target"][j],
                    "last_followed": prediction["last_followed"][j],
                    "target_changes": int(prediction["changes"][j]),
                    # greedy steps by the chosen target's place in nearness to the face (0 = nearest)
                    **({"greedy_places": torch.bincount(prediction["choice_rank"][j]).tolist()} if prediction["choice_rank"].shape[1] else {}),
                    "surrogate_d_r": round(float(prediction["d_r"][j]), 5),
                    "surrogate_d_t": round(float(prediction["d_t"][j]), 5),
                    "surrogate_success": bool(surrogate_success(prediction["d_t"][j], prediction["d_r"][j])),
                    "linf": linf,
                    "seconds": round(prediction["seconds"] / len(prediction["x_p"]), 3),  # its share of the batch's attack time
                    "status": "ok",
                    "error": None,
                }
            except Exception as e:  # one face never stops the run
                out.unlink(missing_ok=True)
                rec |= {"status": "error", "error": f"{rec['source']}: {type(e).__name__}: {e}"}
            append_jsonl(self.manifest, rec)
            if rec["status"] == "ok":
                self.done.add(face_id)


class RunProgress(Callback):
    """A progress bar over photos (or faces) with faces/s and time left; Lightning's own bar
    counts batches. Over photos it moves as each photo is written (``photo_done``, called by the
    photo writer) and, while a batch is attacked, shows how many of its faces are done. Drawn by
    rank 0 only."""

    def __init__(self, unit: str = "face"):
        self.unit, self.bar, self.faces, self.start = unit, None, 0, 0.0

    def photo_done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def faces_attacked(self, done: int, total: int) -> None:
        """Called by the module after each bucket of faces of a batch."""
        if self.bar is not None and done < total:
            self.bar.set_postfix_str(f"{self.faces} faces, attacking this batch's: {done}/{total} done")

    def on_predict_start(self, trainer, pl_module) -> None:
        from tqdm.auto import tqdm

        loaders = trainer.predict_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        sampler = getattr(loader, "batch_sampler", None)
        total = sum(len(b) for b in sampler.batches) if hasattr(sampler, "batches") else None
        self.bar = tqdm(total=total, unit=self.unit, desc="protecting", file=sys.stderr, disable=trainer.global_rank != 0)
        self.start = time.perf_counter()
        if self.unit == "photo":
            pl_module.on_faces_attacked = self.faces_attacked

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.faces += len(batch)
        rate = self.faces / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.faces} faces, {rate:.2f} faces/s")
        if self.unit != "photo":  # photos advance as they are written
            self.bar.update(len(batch))

    def on_predict_end(self, trainer, pl_module) -> None:
        self.bar.close()


class StopOnSigterm(Callback):
    """Stops a run that got a SIGTERM (``kill``, a scheduler's time limit) once the batch in hand
    is written: Lightning's predict loop only notes the signal and would run to the end. The
    process exits with 143 (128 + SIGTERM); the same command resumes at the next photo or face."""

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.received_sigterm and not trainer.predict_loop.batch_progress.is_last_batch:  # done anyway: finish normally
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            print("tipim protect: stopped by SIGTERM; what is written is kept, and the same command goes on from there", file=sys.stderr, flush=True)
            raise SIGTERMException(143)


class AttackStatsLogger(Callback):
    """Per-batch attack statistics to the trainer's logger (CSV, TensorBoard, W&B): objective,
    surrogate distances, surrogate success, target changes, faces per second.

    ``log_images > 0`` also logs, once, a panel of that many original / protected / mask x10
    faces to loggers that take images (W&B). Off by default: faces leave the machine only when a
    user asks for it.
    """

    def __init__(self, log_images: int = 0):
        self.log_images = log_images
        self.images_logged = False

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if "x_p" not in outputs:
            return
        n = len(outputs["x_p"])
        stats = {
            "attack/objective_first": float(outputs["objective"][0]),
            "attack/objective_last": float(outputs["objective"][-1]),
            "attack/d_r": float(outputs["d_r"].mean()),
            "attack/d_t": float(outputs["d_t"].mean()),
            "attack/surrogate_success": float(surrogate_success(outputs["d_t"], outputs["d_r"]).float().mean()),
            "attack/target_changes": float(outputs["changes"].float().mean()),
            **({"attack/greedy_chose_nearest": float((outputs["choice_rank"] == 0).float().mean())} if outputs["choice_rank"].numel() else {}),
            "attack/faces_per_s": n / max(outputs["seconds"], 1e-9),
            "attack/linf_levels": float(max(int((p.int() - r.int()).abs().max()) for p, r in zip(outputs["x_p"], outputs["x_r"]))),
        }
        step = batch_idx * trainer.world_size + trainer.global_rank
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=step)
        if self.log_images and not self.images_logged:
            self._log_panel(trainer, outputs)

    def _log_panel(self, trainer, outputs) -> None:
        n = min(self.log_images, len(outputs["x_p"]))
        pairs = [(r.int(), p.int()) for r, p in zip(outputs["x_r"][:n], outputs["x_p"][:n])]  # photos: one size per face
        rows = [torch.cat([a, b, ((b - a) * 10 + 128).clamp(0, 255)], dim=2).permute(1, 2, 0).to(torch.uint8).numpy() for a, b in pairs]
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="faces/original_protected_mask", images=rows, caption=[f"target {t}" for t in outputs["target"][:n]])
                self.images_logged = True


__all__ = ["AttackStatsLogger", "ManifestWriter", "ProtectedImageWriter", "RunProgress", "StopOnSigterm"]
