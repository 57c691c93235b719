"""The adaptive attacker's training data: photos of people outside every evaluation set, protected
by tipim as any user would, then cut into (protected, clean) crop pairs.

tipim is open source, so an attacker can protect photos of people they already know and learn to
undo the masks. To measure that honestly the people must be disjoint from the ones tested: the
field sets' probes and galleries and the LFW protocol's identities are excluded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from tipim.files import load_rgb


def excluded_people(lfw: str | Path, fields=(), protocol_seed: int | None = 0) -> set[str]:
    """Everyone in the given ``field.json`` files (probes and gallery) and in the LFW protocol
    drawn with ``protocol_seed`` (protected, target and distractor identities)."""
    out: set[str] = set()
    for f in fields:
        field = json.loads(Path(f).read_text())
        out |= {p["identity"] for p in field["probes"]} | {g["identity"] for g in field["gallery"]}
    if protocol_seed is not None:
        from tipim.evaluation.protocol import build_protocol

        p = build_protocol(lfw, protocol_seed)
        out |= set(p["protected_identities"]) | set(p["target_identities"]) | set(p["distractor_identities"])
    return out


def make_pair_set(lfw: str | Path, out: str | Path, people: int = 200, sizes=(40, 55, 110), seed: int = 2, exclude: set[str] = frozenset()) -> dict:
    """``people`` LFW people not in ``exclude``, each one's first photo written once, downscaled so
    that its face is about ``sizes[i % len(sizes)]`` pixels wide, to ``<out>/photos/<person>.png``;
    ``<out>/pairs.json`` records who and at what size. Protect ``<out>/photos`` with ``tipim protect``."""
    from tipim.align.aligner import FaceAligner
    from tipim.evaluation.field import write_at_face_size

    lfw, out = Path(lfw), Path(out)
    pool = sorted(p.name for p in lfw.iterdir() if p.is_dir() and p.name not in exclude)
    chosen = sorted(random.Random(seed).sample(pool, people))
    aligner = FaceAligner(multi="center")
    rows = []
    for person in chosen:
        src = sorted((lfw / person).glob("*.jpg"))[0]
        photo = load_rgb(src)
        faces, _ = aligner.faces(photo)
        if not faces:
            continue
        size = sizes[len(rows) % len(sizes)]
        write_at_face_size(photo, faces[0].box[2] - faces[0].box[0], size, out / "photos" / f"{person}.png")
        rows.append({"identity": person, "source": str(src), "face_px": size})
    meta = {"seed": seed, "lfw": str(lfw), "sizes": list(sizes), "excluded": len(exclude), "people": rows}
    (out / "pairs.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def collect_pairs(photos: str | Path, run: str | Path, out: str | Path | None = None) -> dict:
    """(protected, clean) 112x112 uint8 crop pairs of a protected photo run: the attacker detects
    the face on the clean photo and cuts both photos with that one alignment, so a pixel of one crop
    is the same point of the face in the other. Saved to ``out`` (default ``<run>/pairs.pt``)."""
    from tipim.align.aligner import FaceAligner, align_crop
    from tipim.evaluation.evaluate import read_run

    photos, run = Path(photos), Path(run)
    aligner = FaceAligner(multi="center")
    clean, protected, ids = [], [], []
    for r in read_run(run)[1].values():
        src = load_rgb(photos / f"{r['id']}.png")
        faces, _ = aligner.faces(src)
        if not faces:
            continue
        lm = np.asarray(faces[0].landmarks, dtype=np.float32)
        clean.append(torch.from_numpy(align_crop(src, lm)[0]).permute(2, 0, 1))
        protected.append(torch.from_numpy(align_crop(load_rgb(r["output"]), lm)[0]).permute(2, 0, 1))
        ids.append(r["id"])
    if not ids:
        raise ValueError(f"{run}: no protected photo with a face to pair; protect {photos} into it first")
    pairs = {"clean": torch.stack(clean), "protected": torch.stack(protected), "ids": ids}
    torch.save(pairs, Path(out) if out else run / "pairs.pt")
    return pairs
