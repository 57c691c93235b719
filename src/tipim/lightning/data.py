"""Faces to protect and the target set, streamed in batches that are the same on any number of
processes: batches are cut from the sorted id list first, then dealt out to ranks whole, so the
batch-level MMD term (and every seed) is identical with 1 or N processes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tipim.files import IMAGE_SUFFIXES, ImageReadError, list_images, load_rgb, read_jsonl
from tipim.inputs import Item
from tipim.lightning.batches import CropBatch

FACE_SIZE = 112


def _protocol(source: Path, root: str | Path | None) -> tuple[dict, Path]:
    from tipim.evaluation.protocol import load_protocol

    proto = load_protocol(source)
    return proto, Path(root or proto["root"])


def scan_faces(source: str | Path, root: str | Path | None = None) -> list[Item]:
    """Aligned faces from a folder tree, an image file, an ``alignment.jsonl`` (its ``ok`` lines),
    or a ``protocol.json`` (its probes; paths relative to ``root`` or the protocol's root)."""
    source = Path(source)
    if source.suffix == ".json":
        proto, base = _protocol(source, root)
        items = [Item(str(Path(p["path"]).with_suffix("")), str(base / p["path"])) for p in proto["probes"]]
    elif source.suffix == ".jsonl":
        if not source.is_file():
            raise FileNotFoundError(f"{source} does not exist; make it with: tipim data align --src PHOTOS --out DIR")
        root = source.parent
        latest = {r["source"]: r for r in read_jsonl(source)}
        items = [Item(str(Path(r["output"]).relative_to(root).with_suffix("")), r["output"]) for r in latest.values() if r.get("status") == "ok" and r.get("output")]
    elif source.is_file():
        items = [Item(source.stem, str(source))]
    elif source.is_dir():
        items = [Item(str(p.relative_to(source).with_suffix("")), str(p)) for p in list_images(source)]
    else:
        raise FileNotFoundError(f"faces: {source} is neither a folder, an image nor an alignment.jsonl")
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"faces under {source} have clashing ids (same name, different suffix); rename them")
    return sorted(items, key=lambda i: i.id)


def load_face(path: str | Path) -> torch.Tensor:
    img = load_rgb(path)
    if img.shape[:2] != (FACE_SIZE, FACE_SIZE):
        raise ImageReadError(
            f"{path}: {img.shape[1]}x{img.shape[0]} is not an aligned {FACE_SIZE}x{FACE_SIZE} face; "
            "align photos first with: tipim data align --src PHOTOS --out ALIGNED"
        )
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255.0


def load_targets(source: str | Path, root: str | Path | None = None) -> tuple[list[str], torch.Tensor]:
    """The target set: one aligned image per identity. A folder of ``<identity>/<image>`` (the
    first image of each identity), of flat files (identity = file stem), or a ``protocol.json``
    (its optimisation images)."""
    source = Path(source)
    if source.suffix == ".json":
        proto, base = _protocol(source, root)
        return [t["identity"] for t in proto["targets"]], torch.stack([load_face(base / t["path"]) for t in proto["targets"]])
    if not source.is_dir():
        raise FileNotFoundError(f"targets: {source} is not a folder of aligned target faces")
    names, images = [], []
    for entry in sorted(source.iterdir()):
        if entry.is_dir():
            files = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if files:
                names.append(entry.name)
                images.append(load_face(files[0]))
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            names.append(entry.stem)
            images.append(load_face(entry))
    if not names:
        raise ValueError(f"targets: no images under {source}")
    return names, torch.stack(images)


class FaceFolder(Dataset):
    def __init__(self, items: list[Item]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        try:
            return {"id": item.id, "source": item.path, "image": load_face(item.path), "error": ""}
        except ImageReadError as e:  # the batch goes on; the writer records the error
            return {"id": item.id, "source": item.path, "image": torch.zeros(3, FACE_SIZE, FACE_SIZE), "error": str(e)}


class ShardedBatches(Sampler[list[int]]):
    """Consecutive batches of the sorted ids, skipping batches whose ids are all done, dealt
    round-robin to ranks (batch i goes to rank i % world)."""

    def __init__(self, n: int, batch_size: int, done: set[int], rank: int = 0, world: int = 1):
        batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
        todo = [b for b in batches if not all(j in done for j in b)]
        self.batches = todo[rank::world]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def by_device(trainer, cpu: int, accelerator: int) -> int:
    """A default batch size for where the run is: small on a CPU, large on an accelerator (the
    masks do not depend on it)."""
    from lightning.pytorch.accelerators import CPUAccelerator

    return cpu if trainer is None or isinstance(trainer.accelerator, CPUAccelerator) else accelerator


def collate(rows: list[dict]) -> CropBatch:
    return CropBatch([r["id"] for r in rows], [r["source"] for r in rows], [r["error"] for r in rows], torch.stack([r["image"] for r in rows]))


def seeded_subset(items: list, limit: int | None, seed: int = 0) -> list:
    """``limit`` items drawn with ``seed`` (sorted by id), or all of them; a smaller draw with the
    same seed is a subset of a larger one."""
    if limit is None or limit >= len(items):
        return items
    import random

    return sorted(random.Random(seed).sample(items, limit), key=lambda i: i.id)


class RunData(L.LightningDataModule):
    """What a crop run and a photo run share: the inputs (``find``, sorted by id) cut to a seeded
    subset, the target set, resumption from the run's ``manifest.jsonl``, and batches dealt whole
    to the processes (``ShardedBatches``), so 1 or N processes protect the same batches.
    Subclasses say how inputs are found and read, and which callbacks write the outputs."""

    default_batch = (8, 256)  # (CPU, accelerator) when batch_size is None

    def __init__(self, targets: str, output_dir: str, batch_size: int | None, num_workers: int, limit: int | None,
                 limit_seed: int, root: str | None):
        super().__init__()
        self.targets, self.output_dir, self.root = targets, output_dir, root
        self.batch_size, self.num_workers, self.limit, self.limit_seed = batch_size, num_workers, limit, limit_seed
        self.items: list = []
        self.target_names: list[str] = []
        self.target_images: torch.Tensor | None = None
        self.done: set[str] = set()  # ids already ``ok`` in the run folder (``setup``)

    @property
    def manifest(self) -> Path:
        """The run folder's record, one line per input written (``ManifestWriter``)."""
        return Path(self.output_dir) / "manifest.jsonl"

    def find(self) -> list:
        """Every input, each with a unique ``id``; raises with a hint when there is none."""
        raise NotImplementedError

    def dataset(self) -> Dataset:
        raise NotImplementedError

    def collate(self, rows: list[dict]):
        """One typed batch (``tipim.lightning.batches``) from the dataset's rows."""
        raise NotImplementedError

    def output_callbacks(self) -> list:
        """The writer and progress callbacks that ``ProtectionModule.configure_callbacks`` uses."""
        raise NotImplementedError

    def check_mmd_group(self, group: int) -> None:
        """Raises when MMD groups of ``group`` faces would depend on how the inputs are batched."""

    def summary(self) -> tuple[str, int]:
        """One line for a person about the whole run folder (every rank's lines, earlier runs'
        too), and how many inputs failed."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be at least 1 (or unset for every input), got {self.limit}")
        self.items = seeded_subset(self.find(), self.limit, self.limit_seed)
        self.target_names, self.target_images = load_targets(self.targets, self.root)
        # the run folder's manifest, read once: the batches to skip, and the ids its writer must not write again
        self.done = {r["id"] for r in read_jsonl(self.manifest) if r.get("status") == "ok"}

    def resolved_batch_size(self) -> int:
        return self.batch_size if self.batch_size is not None else by_device(self.trainer, *self.default_batch)

    def predict_dataloader(self) -> DataLoader:
        done_idx = {i for i, it in enumerate(self.items) if it.id in self.done}
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = ShardedBatches(len(self.items), self.resolved_batch_size(), done_idx, rank, world)
        return DataLoader(self.dataset(), batch_sampler=sampler, num_workers=self.num_workers, collate_fn=self.collate)


class ProtectDataModule(RunData):
    """Aligned faces to protect and the target identities.

    Args:
        faces: a folder of aligned faces, one aligned image, an ``alignment.jsonl``, or a
            ``protocol.json`` (its probes).
        targets: a folder with one aligned face per target identity, or a ``protocol.json``.
        root: where a protocol's relative paths start (default: the root it records).
        output_dir: the run folder; ids already ``ok`` in its ``manifest.jsonl`` are skipped.
        batch_size: faces per batch; None: 8 on a CPU, 256 on an accelerator. The masks do not
            depend on it (the MMD term is computed within groups of ``model.mmd_group`` faces, of
            which the batch size must be a multiple).
        num_workers: image-decoding workers per process.
        limit: protect only N faces, drawn with ``limit_seed`` (the same N for every method).
        limit_seed: seed of that draw.
    """

    def __init__(
        self,
        faces: str,
        targets: str,
        output_dir: str = "runs/protect",
        batch_size: int | None = None,
        num_workers: int = 0,
        limit: int | None = None,
        root: str | None = None,
        limit_seed: int = 0,
    ):
        super().__init__(targets, output_dir, batch_size, num_workers, limit, limit_seed, root)
        self.faces = faces

    def find(self) -> list[Item]:
        items = scan_faces(self.faces, self.root)
        if not items:
            raise ValueError(f"no faces found in {self.faces}")
        return items

    def dataset(self) -> Dataset:
        return FaceFolder(self.items)

    def collate(self, rows: list[dict]) -> CropBatch:
        return collate(rows)

    def check_mmd_group(self, group: int) -> None:
        if self.resolved_batch_size() % group:
            raise ValueError(
                f"data.batch_size {self.resolved_batch_size()} is not a multiple of model.mmd_group {group}: the MMD term's groups would "
                f"straddle batches and the masks would depend on the batch size. Use a multiple of {group} or set --model.mmd_group."
            )

    def summary(self) -> tuple[str, int]:
        latest = {r["id"]: r for r in read_jsonl(self.manifest)}
        status = Counter(r["status"] for r in latest.values())
        fooled = sum(1 for r in latest.values() if r.get("surrogate_success"))
        worst = max((r.get("linf") or 0 for r in latest.values()), default=0)
        line = (
            f"{len(latest)} faces: {status.get('ok', 0)} protected, {status.get('error', 0)} failed; "
            f"{fooled} now closer to a target than to themselves on the surrogate; "
            f"max pixel change {worst}/255. Outputs: {self.output_dir}/images, log: {self.output_dir}/manifest.jsonl"
        )
        return line, status.get("error", 0)

    def output_callbacks(self) -> list:
        from tipim.lightning.callbacks import ProtectedImageWriter, RunProgress

        return [ProtectedImageWriter(self.output_dir), RunProgress("face")]


__all__ = ["FaceFolder", "ProtectDataModule", "RunData", "ShardedBatches", "load_face", "load_targets", "scan_faces"]
