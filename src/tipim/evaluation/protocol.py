"""The paper's open-set identification split of an aligned face tree (e.g. LFW).

Protected identities (>= 2 images): one probe each, the rest in the gallery. Target identities
(a bounded number of images, so no target floods the gallery by chance): one image each for the
optimisation, never in the gallery; the rest in the gallery. Distractor identities: all their
images in the gallery. Everything is drawn with one seeded generator.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tipim.files import IMAGE_SUFFIXES


def identities(root: str | Path) -> dict[str, list[str]]:
    """Identity -> sorted image paths relative to ``root`` (one sub-folder per identity)."""
    root = Path(root)
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(str(f.relative_to(root)) for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            out[d.name] = files
    if not out:
        raise ValueError(f"{root}: no <identity>/<image> files; point --aligned at the output of tipim data align")
    return out


def build_protocol(
    root: str | Path,
    seed: int = 0,
    n_protected: int = 500,
    n_targets: int = 10,
    n_distractors: int = 500,
    target_images: tuple[int, int] = (3, 10),
) -> dict:
    people = identities(root)
    rng = random.Random(seed)
    lo, hi = target_images
    eligible_t = [p for p, f in people.items() if lo <= len(f) <= hi]
    if len(eligible_t) < n_targets:
        raise ValueError(f"only {len(eligible_t)} identities have {lo}..{hi} images; need {n_targets} targets")
    targets = sorted(rng.sample(eligible_t, n_targets))
    eligible_p = [p for p, f in people.items() if len(f) >= 2 and p not in targets]
    if len(eligible_p) < n_protected:
        raise ValueError(f"only {len(eligible_p)} identities with >= 2 images are left; asked for {n_protected} protected")
    protected = sorted(rng.sample(eligible_p, n_protected))
    rest = [p for p in people if p not in set(targets) | set(protected)]
    if len(rest) < n_distractors:
        raise ValueError(f"only {len(rest)} identities are left for {n_distractors} distractors")
    distractors = sorted(rng.sample(rest, n_distractors))

    def entry(identity, path):
        return {"identity": identity, "path": path}

    probes, gallery, opt = [], [], []
    for p in protected:
        probe = rng.choice(people[p])
        probes.append(entry(p, probe))
        gallery += [entry(p, f) for f in people[p] if f != probe]
    for t in targets:
        chosen = rng.choice(people[t])
        opt.append(entry(t, chosen))
        gallery += [entry(t, f) for f in people[t] if f != chosen]
    for d in distractors:
        gallery += [entry(d, f) for f in people[d]]
    return {
        "root": str(root),
        "seed": seed,
        "probes": probes,
        "gallery": gallery,
        "targets": opt,
        "protected_identities": protected,
        "target_identities": targets,
        "distractor_identities": distractors,
        "target_images": [lo, hi],
    }


def load_protocol(path: str | Path) -> dict:
    p = json.loads(Path(path).read_text())
    missing = {"probes", "gallery", "targets", "target_identities"} - set(p)
    if missing:
        raise ValueError(f"{path} is not a protocol file (missing {sorted(missing)}); make one with: tipim protocol build")
    return p


__all__ = ["build_protocol", "identities", "load_protocol"]
