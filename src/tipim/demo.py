"""The demo's faces and targets, made from photos that ship inside registry packages:
scikit-image's astronaut (NASA, public domain) and two InsightFace sample photos (fetched and
checksummed as the ``demo`` group). No LFW, no ``../shared``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tipim.files import load_rgb, save_png
from tipim.zoo.registry import artifact_path


def prepare_demo(out: str | Path, n_targets: int = 10) -> dict:
    """Write ``out/faces/*.png`` (faces to protect) and ``out/targets/<id>.png`` (one aligned
    face per target identity): the astronaut and the three players of ``gdp.jpg`` are protected;
    the ``n_targets`` largest faces of the team photo ``players.jpg`` are the targets."""
    import skimage.data

    from tipim.align.aligner import FaceAligner

    out = Path(out)
    aligner = FaceAligner(multi="all")
    written = {"faces": [], "targets": []}

    def faces_of(image: np.ndarray):
        faces, _ = aligner.faces(image)
        return sorted(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)

    astronaut = faces_of(np.asarray(skimage.data.astronaut()))[:1]
    spurs = sorted(faces_of(load_rgb(artifact_path("demo-gdp")))[:3], key=lambda f: f.box[0])
    for name, face in [("astronaut", astronaut[0]), *((f"player_gdp_{i}", f) for i, f in enumerate(spurs))]:
        save_png(out / "faces" / f"{name}.png", face.crop)
        written["faces"].append(name)
    written["targets"] = _team_targets(out / "targets", aligner, n_targets)
    return written


def _team_targets(out: Path, aligner, n_targets: int = 10) -> list[str]:
    faces, _ = aligner.faces(load_rgb(artifact_path("demo-players")))
    faces = sorted(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)[:n_targets]
    names = []
    for i, face in enumerate(sorted(faces, key=lambda f: (f.box[1] // 100, f.box[0]))):
        save_png(out / f"target_{i:02d}.png", face.crop)
        names.append(f"target_{i:02d}")
    return names


def default_targets() -> Path:
    """The target identities used when a user names none: the 10 largest faces of the packaged
    team photo (no person in it is the user), aligned once into the cache."""
    from tipim.align.aligner import FaceAligner
    from tipim.zoo.registry import cache_dir

    out = cache_dir() / "targets" / "demo-team"
    if len(list(out.glob("target_*.png"))) < 10:
        _team_targets(out, FaceAligner(multi="all"))
    return out


__all__ = ["default_targets", "prepare_demo"]
