"""The demo's faces and targets, made from photos that ship inside registry packages:
scikit-image's astronaut (NASA, public domain) and two InsightFace sample photos (fetched and
checksummed as the ``demo`` group). No LFW, no ``../shared``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tipim.io import load_rgb, save_png
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
    team = sorted(faces_of(load_rgb(artifact_path("demo-players")))[:n_targets], key=lambda f: (f.box[1] // 100, f.box[0]))
    for i, face in enumerate(team):
        save_png(out / "targets" / f"target_{i:02d}.png", face.crop)
        written["targets"].append(f"target_{i:02d}")
    return written


__all__ = ["prepare_demo"]
