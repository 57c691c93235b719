"""Whole photos: paste-back round trip, the robust transform, and the CLI on a corpus of odd inputs
(real MTCNN, real arcface-mbf, real photos: scikit-image's astronaut and the packaged team photo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import need_model

TIPIM = [sys.executable, "-m", "tipim.cli"]
REPO = Path(__file__).resolve().parents[1]


def astronaut(size: int = 256) -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.astronaut()).resize((size, size), Image.BICUBIC)


def test_paste_back_keeps_the_bound_and_touches_only_faces():
    need_model("mtcnn")
    need_model("demo")
    from tipim.align.aligner import FaceAligner
    from tipim.align.paste import crop_faces, paste_masks
    from tipim.io import load_rgb
    from tipim.zoo.registry import artifact_path

    photo = load_rgb(artifact_path("demo-gdp"))
    faces, _ = FaceAligner(multi="all").faces(photo)
    assert len(faces) >= 3
    x_r = torch.stack([torch.from_numpy(f.crop).permute(2, 0, 1) for f in faces])
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.randint(-12, 13, (len(faces), 3, 14, 14), generator=g).float(), size=112, mode="bilinear")
    x_p = (x_r.float() + smooth.round()).clamp(0, 255).to(torch.uint8)
    m = torch.tensor([f.matrix for f in faces])
    out, region = paste_masks(photo, x_r, x_p, m, 12)
    diff = np.abs(out.astype(int) - photo.astype(int))
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert diff.max() <= 12 and diff.max() > 6
    changed = diff.max(2) > 0
    assert not changed[~region].any()  # nothing outside the faces' crop footprints
    boxes = np.zeros_like(region)  # and the footprints stay near the detected faces
    for f in faces:
        x0, y0, x1, y1 = f.box
        w, h = x1 - x0, y1 - y0
        boxes[max(0, int(y0 - h)) : int(y1 + h), max(0, int(x0 - w)) : int(x1 + w)] = True
    assert not region[~boxes].any()
    assert changed.sum() > 0.5 * region.sum()
    # the mask survives the round trip: re-cropping the photo gives back most of it
    again = crop_faces(out, m) * 255
    err = (again - x_p.float()).abs().mean()
    assert err < 0.5 * (x_r.float() - x_p.float()).abs().mean()


def test_paste_back_rejects_mismatched_inputs():
    from tipim.align.paste import paste_masks

    photo = np.zeros((50, 50, 3), np.uint8)
    x = torch.zeros(2, 3, 112, 112, dtype=torch.uint8)
    with pytest.raises(ValueError, match="matrices"):
        paste_masks(photo, x, x, torch.zeros(1, 2, 3), 12)
    with pytest.raises(ValueError, match="uint8"):
        paste_masks(photo.astype(np.float32), x, x, torch.zeros(2, 2, 3), 12)


def test_posting_transform_is_differentiable_and_bounded():
    from tipim.attack import PostingTransform, RandomAffine

    torch.manual_seed(0)
    t = PostingTransform(quality=(70, 90), base=RandomAffine())
    x = torch.rand(3, 3, 112, 112, requires_grad=True)
    y = t(x)
    v = y.detach()
    assert v.shape == x.shape and 0 <= float(v.min()) and float(v.max()) <= 1.0 + 1e-4
    y.mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # JPEG at quality 75 is close to, but not equal to, its input
    j = PostingTransform(quality=(75, 75), jpeg_prob=1.0, scale=(1.0, 1.0), shift=0)(x.detach())
    assert 0 < float((j - x.detach()).abs().mean()) < 0.2
    with pytest.raises(ValueError, match="quality"):
        PostingTransform(quality=(0, 120))


def _corpus(root: Path) -> dict[str, str]:
    """Odd inputs and the documented outcome of each."""
    root.mkdir()
    face = astronaut()
    face.save(root / "plain.jpg", quality=92)
    jpeg = (root / "plain.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "zero.jpg").write_bytes(b"")
    (root / "notes.png").write_text("not a photo")
    Image.new("1", (9000, 9000)).save(root / "huge.png")  # 81 MP, a few KB on disk
    face.convert("L").save(root / "grey.png")
    face.convert("CMYK").save(root / "cmyk.jpg")
    rgba = face.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(root / "rgba.png")
    arr16 = (np.asarray(face.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(arr16).save(root / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; upright after a 90-degree turn
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0)}  # a GPS position that must not be written out
    face.transpose(Image.Transpose.ROTATE_90).save(root / "rotated.jpg", exif=exif, quality=92)
    Image.fromarray(np.random.default_rng(0).integers(90, 160, (200, 300, 3), dtype=np.uint8)).save(root / "noface.png")
    three = Image.new("RGB", (768, 256))
    for i in range(3):
        three.paste(face, (256 * i, 0))
    three.save(root / "three.png")
    return {"plain": "ok", "truncated": "unreadable", "zero": "unreadable", "notes": "unreadable", "huge": "unreadable",
            "grey": "ok", "cmyk": "ok", "rgba": "ok", "sixteen": "ok", "rotated": "ok", "noface": "no_face", "three": "ok"}


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    need_model("arcface-mbf")
    need_model("mtcnn")
    need_model("demo")
    root = tmp_path_factory.mktemp("photos")
    expected = _corpus(root / "in")
    out = root / "out"
    cmd = [*TIPIM, "protect", str(root / "in"), "--out", str(out), "--preset", "fast", "--model.steps", "3", "--trainer.accelerator", "cpu"]
    env = os.environ | {"OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return {"in": root / "in", "out": out, "expected": expected, "result": r, "cmd": cmd, "env": env}


def test_odd_inputs_each_get_their_documented_outcome(photo_run):
    r, expected = photo_run["result"], photo_run["expected"]
    assert r.returncode == 1, r.stdout + r.stderr  # some photos failed: exit 1, the rest written
    rows = {x["id"]: x for x in map(json.loads, (photo_run["out"] / "manifest.jsonl").read_text().splitlines())}
    assert {k: v["status"] for k, v in rows.items()} == expected
    for name in ("truncated", "zero", "notes", "huge", "noface"):
        assert rows[name]["error"].startswith(str(photo_run["in"] / name)), rows[name]["error"]  # names the file
        assert name in r.stderr  # and says so while running
    assert "megapixel" in rows["huge"]["error"] and "no face found" in rows["noface"]["error"]
    assert [len(rows[n]["faces"]) for n in ("plain", "grey", "cmyk", "rgba", "sixteen", "rotated", "three")] == [1, 1, 1, 1, 1, 1, 3]
    assert "12 photos, 9 faces: 7 photos protected, 5 failed (1 no face, 4 unreadable)" in r.stdout


def test_written_photos_keep_size_bound_and_drop_metadata(photo_run):
    from tipim.io import load_rgb

    rows = [json.loads(x) for x in (photo_run["out"] / "manifest.jsonl").read_text().splitlines()]
    for row in (x for x in rows if x["status"] == "ok"):
        src, out = load_rgb(row["source"]), load_rgb(row["output"])
        assert out.shape == src.shape  # original (upright) size
        d = np.abs(out.astype(int) - src.astype(int))
        assert d.max() <= 12 and row["linf"] == d.max() and d.max() > 0
        far = np.ones(d.shape[:2], bool)  # pixels well away from every face are untouched
        for f in row["faces"]:
            x0, y0, x1, y1 = f["box"]
            w, h = x1 - x0, y1 - y0
            far[max(0, int(y0 - h)) : int(y1 + h), max(0, int(x0 - w)) : int(x1 + w)] = False
        assert far.any() and d.max(2)[far].max() == 0
        with Image.open(row["output"]) as im:
            assert not im.getexif() and "exif" not in im.info
    rotated = next(x for x in rows if x["id"] == "rotated")
    assert load_rgb(rotated["output"]).shape[:2] == (256, 256)


def test_rerun_skips_what_is_done_and_retries_failures(photo_run):
    manifest = photo_run["out"] / "manifest.jsonl"
    before = manifest.read_text().splitlines()
    r = subprocess.run(photo_run["cmd"], cwd=REPO, env=photo_run["env"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 1
    after = manifest.read_text().splitlines()
    new = [json.loads(x) for x in after[len(before) :]]
    assert sorted(x["id"] for x in new) == ["huge", "noface", "notes", "truncated", "zero"]  # only the failures again


def test_jpeg_output_and_kept_metadata(tmp_path):
    need_model("arcface-mbf")
    need_model("mtcnn")
    need_model("demo")
    from tipim.io import load_rgb

    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    src = tmp_path / "me.jpg"
    astronaut().save(src, exif=exif, quality=95)
    out = tmp_path / "out"
    cmd = [*TIPIM, "protect", str(src), "--out", str(out), "--preset", "fast", "--model.steps", "2", "--format", "jpeg",
           "--quality", "90", "--keep-metadata", "--trainer.accelerator", "cpu"]
    r = subprocess.run(cmd, cwd=REPO, env=os.environ | {"OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (row,) = map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
    assert row["output"].endswith(".jpg") and row["linf_before_encoding"] <= 12
    with Image.open(row["output"]) as im:
        assert im.format == "JPEG" and im.getexif().get(0x010F) == "CameraMaker"
    assert load_rgb(row["output"]).shape == load_rgb(src).shape
