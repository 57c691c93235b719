"""`tipim protect` on photos, as a user runs it: a corpus of odd inputs, the written files (size,
bound, metadata), resume, output formats, goals, presets and the one parser (real MTCNN, real
arcface-mbf, real photos: scikit-image's astronaut and the packaged team photo)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import astronaut, need_model, run_tipim


TIPIM = [sys.executable, "-m", "tipim.cli"]


REPO = Path(__file__).resolve().parents[1]


NOCAPS = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]  # root obeys file modes too


def _noise(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(90, 160, (h, w, 3), dtype=np.uint8))


def _corpus(root: Path) -> dict[str, tuple[str, str]]:
    """Odd inputs, each with its documented status and a piece of its message ("" for ok)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    root.mkdir()
    face = astronaut()
    expect = {}

    def case(name, status, says=""):
        expect[name] = (status, says)

    face.save(root / "plain.jpg", quality=92)
    case("plain", "ok")
    jpeg = (root / "plain.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    case("truncated", "unreadable", "damaged")
    (root / "zero.jpg").write_bytes(b"")
    case("zero", "unreadable", "not an image this tool can read")
    (root / "notes.png").write_text("not a photo")
    case("notes", "unreadable", "not an image this tool can read")
    Image.new("1", (9000, 9000)).save(root / "huge.png")  # 81 MP, a few KB on disk
    case("huge", "unreadable", "megapixel")
    sof = jpeg.index(b"\xff\xc0")  # a JPEG whose header claims 60000 x 60000 pixels
    (root / "header.jpg").write_bytes(jpeg[: sof + 5] + (60000).to_bytes(2, "big") * 2 + jpeg[sof + 9 :])
    case("header", "unreadable", "more pixels than the 64-megapixel limit")
    face.convert("L").save(root / "grey.png")
    case("grey", "ok")
    face.convert("CMYK").save(root / "cmyk.jpg")
    case("cmyk", "ok")
    rgba = face.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(root / "rgba.png")
    case("rgba", "ok")
    Image.fromarray((np.asarray(face.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)).save(root / "sixteen.png")
    case("sixteen", "ok")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; upright after a 90-degree turn
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0)}  # a GPS position that must not be written out
    face.transpose(Image.Transpose.ROTATE_90).save(root / "rotated.jpg", exif=exif, quality=92)
    case("rotated", "ok")
    _noise(200, 300).save(root / "noface.png")
    case("noface", "no_face", "no face found")
    three = Image.new("RGB", (768, 256))
    for i in range(3):
        three.paste(face, (256 * i, 0))
    three.save(root / "three.png")
    case("three", "ok")
    Image.new("RGB", (1, 1)).save(root / "one.png")
    case("one", "no_face", "only 1x1 pixels, too small to hold a face")
    face.resize((20, 20)).save(root / "twenty.png")
    case("twenty", "no_face", "no face found")
    face.crop((110, 0, 256, 256)).save(root / "border.png")  # half the face is outside the photo
    case("border", "ok")
    face.save(root / "iphone.heic", quality=90)
    case("iphone", "ok")
    face.save(root / "modern.avif", quality=90)
    case("modern", "ok")
    face.save(root / "still.gif")
    case("still", "ok")
    face.save(root / "animated.gif", save_all=True, append_images=[face.rotate(5)], duration=100)
    case("animated", "unreadable", "an animation (2 frames)")
    os.symlink("loop_b.jpg", root / "loop.jpg")
    os.symlink("loop.jpg", root / "loop_b.jpg")
    case("loop", "unreadable", "points to itself")
    case("loop_b", "unreadable", "points to itself")
    os.symlink("gone.jpg", root / "dangling.jpg")
    case("dangling", "unreadable", "no such file")
    face.save(root / "locked.jpg")
    os.chmod(root / "locked.jpg", 0)
    case("locked", "unreadable", "permission denied")
    face.save(root / "with space.jpg")
    case("with space", "ok")
    face.save(root / "café_ß_写真.jpg")
    case("café_ß_写真", "ok")
    (root / "album.jpg").mkdir()  # a folder named like a photo
    _noise(64, 64, 1).save(root / "album.jpg" / "inner.png")
    case("album.jpg/inner", "no_face", "no face found")
    for d in ("a", "b"):  # the same name in two folders
        (root / d).mkdir()
        _noise(64, 64, 2).save(root / d / "same.jpg")
        case(f"{d}/same", "no_face", "no face found")
    (root / "twin.jpg").write_bytes(jpeg[:100])  # the same stem twice in one folder
    case("twin.jpg", "unreadable", "damaged")
    _noise(64, 64, 3).save(root / "twin.png")
    case("twin.png", "no_face", "no face found")
    face.save(root / "mislabelled.jpg", format="PNG")  # PNG bytes behind a .jpg name
    case("mislabelled", "ok")
    _noise(80, 80, 4).save(root / "bitmap.bmp")
    case("bitmap", "no_face", "no face found")
    _noise(80, 80, 5).save(root / "scan.TIFF")
    case("scan", "no_face", "no face found")
    _noise(80, 80, 6).convert("P").save(root / "palette.png", transparency=0)
    case("palette", "no_face", "no face found")
    _noise(30, 2000, 7).save(root / "panorama.webp", lossless=True)
    case("panorama", "no_face", "no face found")
    (root / ".DS_Store").write_bytes(b"\0" * 10)  # not read, counted in the summary
    (root / "readme.txt").write_text("holiday photos")
    (root / "last_run" / "images").mkdir(parents=True)  # an earlier run's output folder: not protected twice
    (root / "last_run" / ".tipim.lock").write_text("")
    face.save(root / "last_run" / "images" / "plain.png")
    return expect


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    need_model("arcface-mbf")
    need_model("mtcnn")
    need_model("demo")
    root = tmp_path_factory.mktemp("photos")
    expected = _corpus(root / "in")
    out = root / "in" / "protected"  # the output folder inside the input folder
    cmd = [*TIPIM, "protect", str(root / "in"), "--out", str(out), "--preset", "fast", "--model.steps", "3", "--trainer.accelerator", "cpu"]
    if os.geteuid() == 0:
        cmd = NOCAPS + cmd
    env = os.environ | {"OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return {"in": root / "in", "out": out, "expected": expected, "result": r, "cmd": cmd, "env": env}


@pytest.mark.slow
def test_a_runs_saved_config_builds_the_same_run_again(photo_run):
    """``config.yaml`` holds the resolved run, nulls included, so ``--config`` on it rebuilds it."""
    from tipim.lightning.cli import build_protect

    again = build_protect(["--config", str(photo_run["out"] / "config.yaml")])
    a = again.model.attack
    assert again.model.method == "tipim-fast" and again.model.steps == 3 and a.objective.away == 4.0
    assert type(a.transform).__name__ == "PostingTransform" and a.selector.every == 5
    assert again.datamodule.photos == [str(photo_run["in"])] and again.datamodule.output_dir == str(photo_run["out"])


def test_commands_other_than_protect_do_not_import_lightning():
    """``tipim models list`` and ``tipim --help`` start at once: protect's options are built only for protect."""
    code = "import sys; from tipim.cli import main; main(['models', 'list']); print('lightning' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("False"), r.stdout + r.stderr


@pytest.mark.slow
def test_odd_inputs_each_get_their_documented_outcome(photo_run):
    r, expected = photo_run["result"], photo_run["expected"]
    assert len(expected) >= 30
    assert r.returncode == 1, r.stdout + r.stderr  # some photos failed: exit 1, the rest written
    rows = {x["id"]: x for x in map(json.loads, (photo_run["out"] / "manifest.jsonl").read_text().splitlines())}
    assert {k: v["status"] for k, v in rows.items()} == {k: v[0] for k, v in expected.items()}
    for name, (status, says) in expected.items():
        if status != "ok":
            assert says in rows[name]["error"], (name, rows[name]["error"])
            assert rows[name]["error"].startswith(rows[name]["source"] + ":")  # names the file, once
            assert rows[name]["error"].count(rows[name]["source"]) == 1, rows[name]["error"]
            assert rows[name]["source"] in r.stderr  # and says so while running
    faces = {n: len(rows[n]["faces"]) for n, (status, _) in expected.items() if status == "ok"}
    assert faces.pop("three") == 3 and set(faces.values()) == {1}
    n_ok = sum(s == "ok" for s, _ in expected.values())
    assert f"{len(expected)} photos, {n_ok + 2} faces: {n_ok} photos protected, {len(expected) - n_ok} failed" in r.stdout
    assert "3 files not read: 1 a tipim output folder (already protected), 1 hidden file, 1 not a photo (.txt)" in r.stdout
    assert "readme.txt: not a photo (.txt)" in r.stderr
    checked = rows["plain"]["faces"][0]["independent"]  # models that did not make the mask
    independent = ["sface", "facenet", "dlib-resnet", "edgeface-s"]  # every zoo model but the surrogate
    assert rows["plain"]["check_models"] == independent and checked["found"]
    assert set(checked["models"]) == set(independent) and f"independent check ({', '.join(independent)}): " in r.stdout


@pytest.mark.slow
def test_bad_outputs_and_empty_inputs_stop_early_with_a_clear_message(tmp_path):
    need_model("demo")
    env = os.environ | {"OMP_NUM_THREADS": "2"}
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    r = run_tipim(["protect", tmp_path / "empty", "--out", tmp_path / "o"])
    assert r.returncode == 2 and "no photos in" in r.stderr and "1 not a photo (.txt)" in r.stderr and "HEIC" in r.stderr
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder is writable to root")
    astronaut().save(tmp_path / "me.jpg")
    ro = tmp_path / "readonly"
    ro.mkdir(mode=0o555)
    cmd = [*TIPIM, "protect", str(tmp_path / "me.jpg"), "--out", str(ro)]
    r = subprocess.run((NOCAPS if os.geteuid() == 0 else []) + cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and f"{ro}: cannot write the output folder" in r.stderr and "choose another --out" in r.stderr


def test_help_leads_with_the_photo_options():
    r = run_tipim(["protect", "--help"])
    assert r.returncode == 0
    for flag in ("--out", "--preset", "--robust", "--format", "--faces", "balanced", "--help-all"):
        assert flag in r.stdout
    assert "max_epochs" not in r.stdout
    r = run_tipim(["protect", "--help-all"])
    assert r.returncode == 0 and "--trainer.accelerator" in r.stdout and "--model.surrogates" in r.stdout


@pytest.mark.slow
def test_written_photos_keep_size_bound_and_drop_metadata(photo_run):
    from tipim.files import load_rgb

    rows = [json.loads(x) for x in (photo_run["out"] / "manifest.jsonl").read_text().splitlines()]
    for row in (x for x in rows if x["status"] == "ok"):
        src, out = load_rgb(row["source"]), load_rgb(photo_run["out"] / row["output"])
        assert out.shape == src.shape  # original (upright) size
        d = np.abs(out.astype(int) - src.astype(int))
        assert d.max() <= 12 and row["linf"] == d.max() and d.max() > 0
        far = np.ones(d.shape[:2], bool)  # pixels well away from every face are untouched
        for f in row["faces"]:
            x0, y0, x1, y1 = f["box"]
            w, h = x1 - x0, y1 - y0
            far[max(0, int(y0 - h)) : int(y1 + h), max(0, int(x0 - w)) : int(x1 + w)] = False
        assert far.any() and d.max(2)[far].max() == 0
        with Image.open(photo_run["out"] / row["output"]) as im:
            assert not im.getexif() and "exif" not in im.info
    rotated = next(x for x in rows if x["id"] == "rotated")
    assert load_rgb(photo_run["out"] / rotated["output"]).shape[:2] == (256, 256)


@pytest.mark.slow
def test_rerun_skips_what_is_done_and_retries_failures(photo_run):
    manifest = photo_run["out"] / "manifest.jsonl"
    before = manifest.read_text().splitlines()
    r = subprocess.run(photo_run["cmd"], cwd=REPO, env=photo_run["env"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 1
    after = manifest.read_text().splitlines()
    new = [json.loads(x) for x in after[len(before) :]]
    failed = sorted(k for k, (status, _) in photo_run["expected"].items() if status != "ok")
    assert sorted(x["id"] for x in new) == failed  # only the failures again; the outputs inside the input are not inputs


def test_jpeg_output_and_kept_metadata(tmp_path):
    need_model("arcface-mbf")
    need_model("mtcnn")
    need_model("demo")
    from tipim.files import load_rgb

    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    src = tmp_path / "me.jpg"
    astronaut().save(src, exif=exif, quality=95)
    out = tmp_path / "out"
    r = run_tipim(["protect", src, "--out", out, "--preset", "fast", "--model.steps", "2", "--format", "jpeg",
                   "--quality", "90", "--keep-metadata", "--trainer.accelerator", "cpu"])
    assert r.returncode == 0, r.stdout + r.stderr
    (row,) = map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
    assert row["output"].endswith(".jpg") and row["linf_before_encoding"] <= 12
    with Image.open(out / row["output"]) as im:
        assert im.format == "JPEG" and im.getexif().get(0x010F) == "CameraMaker"
    assert load_rgb(out / row["output"]).shape == load_rgb(src).shape


def test_goal_hide_moves_the_face_further_from_the_person_than_goal_target(tmp_path):
    """--goal hide weighs leaving the person's identity more: after the same steps the written
    face is further from the original on the surrogate."""
    need_model("arcface-mbf")
    need_model("mtcnn")
    need_model("demo")
    src = tmp_path / "me.png"
    astronaut().save(src)
    faces = {}
    for goal in ("hide", "target"):
        out = tmp_path / goal
        r = run_tipim(["protect", src, "--out", out, "--goal", goal, "--model.steps", "6", "--check", "none", "--trainer.accelerator", "cpu"])
        assert r.returncode == 0, r.stdout + r.stderr
        ((face,),) = [json.loads(line)["faces"] for line in (out / "manifest.jsonl").read_text().splitlines()]
        faces[goal] = face
    assert faces["hide"]["surrogate_d_r"] > faces["target"]["surrogate_d_r"]


@pytest.mark.slow
def test_photos_per_batch_change_no_pixel(tmp_path):
    """Three photos with faces of different sizes, one per batch against all three in one padded
    batch: the same written pixels (float64, where the surrogate's kernels are batch-size free)."""
    need_model("mtcnn")
    need_model("arcface-mbf")
    src = tmp_path / "in"
    src.mkdir()
    astronaut(512).resize((250, 250), Image.BICUBIC).save(src / "a.png")
    astronaut(512).crop((60, 0, 460, 300)).save(src / "b.png")
    astronaut(512).resize((180, 180), Image.BICUBIC).save(src / "c.png")
    outs = {}
    for b in (1, 3):
        outs[b] = tmp_path / f"b{b}"
        r = run_tipim(["protect", src, "--out", outs[b], "--check", "none", "--model.steps", "3",
                       "--data.batch_size", b, "--trainer.precision", "64-true", "--trainer.accelerator", "cpu"])
        assert r.returncode == 0, r.stdout + r.stderr
    for name in ("a", "b", "c"):
        one, three = (np.asarray(Image.open(outs[b] / "images" / f"{name}.png")) for b in (1, 3))
        assert np.array_equal(one, three), name
        assert np.abs(one.astype(int) - np.asarray(Image.open(src / f"{name}.png").convert("RGB")).astype(int)).max() > 0


def test_a_run_stopped_by_an_error_keeps_the_photos_written_while_it_attacked(tmp_path, monkeypatch):
    """Photos written in a thread while the next batch is attacked (on an accelerator; forced
    here): when a later batch fails, the run stops only after the batch in flight is written."""
    need_model("mtcnn")
    need_model("arcface-mbf")
    import threading

    from tipim.lightning.cli import build_protect
    from tipim.lightning.photo_writer import ProtectedPhotoWriter

    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b", "c"):
        astronaut(250).save(src / f"{name}.png")
    cli = build_protect([str(src), "--out", str(tmp_path / "out"), "--check", "none", "--model.steps", "1",
                         "--data.batch_size", "1", "--trainer.accelerator", "cpu"])
    step, threads, failed = cli.model.predict_step, [], threading.Event()

    def failing_third(batch, batch_idx):
        if batch_idx == 2:
            failed.set()
            raise RuntimeError("stopped")
        return step(batch, batch_idx)

    write = ProtectedPhotoWriter._write_batch

    def write_b_after_the_failure(self, trainer, module, prediction):
        threads.append(threading.current_thread().name)
        if prediction["id"] == ["b#0"]:
            assert failed.wait(120)  # still in flight when the third batch fails
        write(self, trainer, module, prediction)

    monkeypatch.setattr(ProtectedPhotoWriter, "_write_batch", write_b_after_the_failure)
    monkeypatch.setattr(ProtectedPhotoWriter, "overlap", True)
    monkeypatch.setattr(cli.model, "predict_step", failing_third)
    with pytest.raises(RuntimeError, match="stopped"):
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    rows = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [(r["id"], r["status"]) for r in rows] == [("a", "ok"), ("b", "ok")]
    assert all((tmp_path / "out" / r["output"]).is_file() for r in rows)
    assert threads and all(t.startswith("tipim-write") for t in threads)


@pytest.mark.slow
def test_sigterm_stops_the_run_after_the_batch_in_hand_and_the_same_command_resumes(tmp_path):
    """Lightning's predict loop would note a SIGTERM and run to the end; a run stops at the next
    batch boundary instead, keeps what it wrote, and the same command finishes the rest."""
    import signal
    import time

    need_model("mtcnn")
    need_model("arcface-mbf")
    src = tmp_path / "in"
    src.mkdir()
    for name in "abcd":
        astronaut(250).save(src / f"{name}.png")
    out = tmp_path / "out"
    cmd = [*TIPIM, "protect", str(src), "--out", str(out), "--check", "none", "--model.steps", "8", "--data.batch_size", "1",
           "--trainer.accelerator", "cpu"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest = out / "manifest.jsonl"
    while proc.poll() is None and not (manifest.is_file() and manifest.read_text().count("\n") >= 1):
        time.sleep(0.02)  # the first photo is written: the second is being attacked
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143 and "stopped by SIGTERM" in err, err[-2000:]
    done = [json.loads(x)["id"] for x in manifest.read_text().splitlines()]
    assert 1 <= len(done) < 4
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == list("abcd") and all(r["status"] == "ok" for r in rows)  # each photo once


def test_presets_are_tipim_as_the_method_config_defines_it():
    """The photo presets (package YAML, so ``pip install .`` has them) differ from
    configs/method/tipim.yaml only in budget, surrogates and the greedy shortlist; --goal and
    --robust set the defaults beneath them, and the user's options win."""
    import yaml

    from tipim.lightning.cli import build_protect, presets

    method = yaml.safe_load((REPO / "configs" / "method" / "tipim.yaml").read_text())["model"]
    assert set(presets()) == {"fast", "balanced", "strong"}
    for name, path in presets().items():
        model = yaml.safe_load(path.read_text())["model"]
        assert {k: model[k] for k in ("momentum", "gamma")} == {k: method[k] for k in ("momentum", "gamma")}, name
        assert model["selector"]["class_path"] == method["selector"]["class_path"]
        assert set(model) <= {"momentum", "gamma", "steps", "surrogates", "selector"}, name  # nothing else sneaks in
        run = build_protect(["me.jpg", "--preset", name, "--model.steps", "3"])
        assert run.model.steps == 3 and run.model.surrogate_names == model["surrogates"]  # the user's flags win
        assert run.model.method == f"tipim-{name}" and run.model.attack.objective.away == 4.0  # --goal hide (default)
        assert type(run.model.attack.transform).__name__ == "PostingTransform"  # --robust (default)
        target = build_protect(["me.jpg", "--preset", name, "--goal", "target", "--no-robust"])
        assert target.model.attack.objective.away == 1.0 and target.model.method == f"tipim-{name}-plain-target"
        assert type(target.model.attack.transform).__name__ == "RandomAffine" and target.model.steps == model["steps"]
    assert build_protect(["me.jpg", "--goal", "target", "--model.away", "2"]).model.attack.objective.away == 2.0


def test_one_parser_takes_photos_or_a_config_and_says_which_options_belong_to_which(tmp_path):
    """Photos and aligned-face configs go through the same parser; the config's paper settings
    are not touched by the photo defaults, and a photo option on aligned faces is refused."""
    from tipim.lightning.cli import build_protect

    faces = build_protect(["--config", "configs/protect.yaml", "--config", "configs/method/mim.yaml", "--out", str(tmp_path / "m")])
    assert type(faces.datamodule).__name__ == "ProtectDataModule" and faces.datamodule.output_dir == str(tmp_path / "m")
    assert faces.model.method == "mim" and faces.model.attack.objective.away == 1.0 and faces.model.attack.transform is None
    assert build_protect(["--config", "configs/protect.yaml"]).model.attack.objective.away == 1.0  # the paper's weighting
    photos = build_protect(["a.jpg", "b/", "--out", str(tmp_path / "p"), "--format", "jpeg", "--data.batch_size", "2"])
    assert photos.datamodule.photos == ["a.jpg", "b/"] and photos.datamodule.output_format == "jpeg"
    assert photos.datamodule.batch_size == 2 and photos.datamodule.output_dir == str(tmp_path / "p")
    r = run_tipim(["protect", "--config", "configs/protect.yaml", "--format", "jpeg"])
    assert r.returncode == 2 and "--format is an option for photos" in r.stderr
    r = run_tipim(["protect", "me.jpg", "--config", "configs/protect.yaml"])
    assert r.returncode == 2 and "photos were given" in r.stderr
    r = run_tipim(["protect"])
    assert r.returncode == 2 and "tipim protect PHOTO..." in r.stdout
    r = run_tipim(["protect", "x.jpg", "--preset", "fast", "--print_config"])  # shown as resolved: the preset, the photos
    assert r.returncode == 0 and "steps: 20" in r.stdout and "- x.jpg" in r.stdout and "method: tipim-fast" in r.stdout


def test_preset_goal_and_robust_are_default_config_files_beneath_every_config(tmp_path):
    """The three choices name files of the config tree that the one parse starts from: a --config
    or option wins wherever it stands, a config file cannot choose them (it would have no effect),
    and a run's saved config rebuilds the run without them."""
    import glob

    from tipim.lightning.cli import CONFIGS, RunConfigSaver, build_protect

    own = tmp_path / "own.yaml"
    own.write_text("model:\n  steps: 7\n")
    run = build_protect(["--config", str(own), "me.jpg", "--preset", "fast", "--goal", "target", "--no-robust", "--out", str(tmp_path / "o")])
    assert run.model.steps == 7 and run.model.attack.selector.every == 5  # the config given first still wins; fast's selector stays
    assert run.model.method == "tipim-fast-plain-target" and run.model.attack.objective.away == 1.0
    assert type(run.model.attack.transform).__name__ == "RandomAffine"
    files = ("photos.yaml", "preset/fast.yaml", "goal/target.yaml", "robust/off.yaml")
    assert run.parser.default_config_files == [glob.escape(str(CONFIGS / f)) for f in files]
    saver = next(c for c in run.trainer.callbacks if isinstance(c, RunConfigSaver))
    saver.setup(run.trainer, run.model, "predict")
    saved = (tmp_path / "o" / "config.yaml").read_text()
    assert saved.startswith("# tipim protect --preset fast --goal target --no-robust") and "\npreset:" not in saved
    again = build_protect(["--config", str(tmp_path / "o" / "config.yaml")])
    assert (again.model.method, again.model.steps, again.model.attack.objective.away) == ("tipim-fast-plain-target", 7, 1.0)
    assert type(again.model.attack.transform).__name__ == "RandomAffine" and again.model.attack.selector.every == 5
    chooser = tmp_path / "chooser.yaml"
    chooser.write_text("preset: strong\n")
    with pytest.raises(ValueError, match="a config file sets preset: strong, but the command line chose balanced"):
        build_protect(["me.jpg", "--config", str(chooser)])
    with pytest.raises(SystemExit):  # an abbreviation is refused by the parse as by the scan, not taken by one of them
        build_protect(["me.jpg", "--pre", "fast"])


def test_the_config_tree_ships_in_the_package():
    """configs/ is the one config tree; the package reaches it as tipim/configs and pip installs
    every file of it (pyproject's package-data), so presets and methods work without a clone."""
    from pathlib import PurePosixPath

    tomllib = pytest.importorskip("tomllib", reason="pyproject.toml is read with tomllib (Python 3.11+)")

    from tipim.lightning.cli import CONFIGS

    assert CONFIGS.resolve() == (REPO / "configs").resolve()
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tipim"]
    files = [PurePosixPath(p.relative_to(REPO).as_posix()) for p in (REPO / "configs").rglob("*") if p.is_file()]
    assert len(files) >= 20
    shipped = lambda f: any(len(PurePosixPath(p).parts) == len(f.parts) and f.match(p) for p in patterns)  # noqa: E731
    assert [f for f in files if not shipped(f)] == []


def test_configs_named_as_in_the_readme_are_found_in_the_package_from_any_folder(tmp_path, monkeypatch):
    """After ``pip install`` there is no configs/ folder beside the user: ``--config
    configs/method/mim.yaml`` (or ``method/mim.yaml``) reads the shipped file; a file of the user's
    own with that name wins, and a name that is nowhere is still an error."""
    from tipim.lightning.cli import build_protect

    monkeypatch.chdir(tmp_path)
    run = build_protect(["--config", "configs/protect.yaml", "--config=method/mim.yaml", "--out", "m"])
    assert type(run.datamodule).__name__ == "ProtectDataModule" and run.model.method == "mim"
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "mim.yaml").write_text("model:\n  method: my-mim\n")
    assert build_protect(["--config", "configs/protect.yaml", "-c", "method/mim.yaml"]).model.method == "my-mim"
    with pytest.raises(SystemExit):
        build_protect(["--config", "configs/nowhere.yaml"])
