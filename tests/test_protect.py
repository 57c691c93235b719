"""End to end through the CLI: real arcface-mbf, real faces, real processes (gloo DDP, SIGKILL)."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import need_model, run_tipim

TIPIM = [sys.executable, "-m", "tipim.cli"]


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    need_model("arcface-mbf")
    need_model("mtcnn")
    need_model("demo")
    from tipim.demo import prepare_demo

    out = tmp_path_factory.mktemp("demo")
    prepare_demo(out)
    # protect the ten team faces (more ids than the demo's four), towards the four demo faces
    return {"faces": out / "targets", "targets": out / "faces"}


def protect(demo_data, out: Path, *extra: str, devices: int = 1, background: bool = False, env: dict | None = None, fresh: bool = False):
    """``tipim protect`` on the demo faces: in this process, or in a fresh one where the test
    needs it (``devices > 1``: DDP; ``background``: to be killed; ``fresh``: W&B's global run)."""
    cmd = [
        *TIPIM, "protect", "--config", "configs/protect.yaml", "--config", "configs/method/mim.yaml",
        "--data.faces", str(demo_data["faces"]), "--data.targets", str(demo_data["targets"]),
        "--data.output_dir", str(out), "--data.batch_size", "2", "--model.steps", "4",
        "--trainer.accelerator", "cpu", "--trainer.devices", str(devices), "--trainer.enable_progress_bar", "false",
        *(["--trainer.strategy", "ddp"] if devices > 1 else []), *extra,
    ]
    extra_env = {"OMP_NUM_THREADS": "1"} | (env or {})
    if devices == 1 and not background and not fresh:
        return run_tipim(cmd[len(TIPIM) :], env=extra_env)
    env = os.environ | {"PYTHONUNBUFFERED": "1"} | extra_env
    repo = Path(__file__).resolve().parents[1]
    if background:
        return subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="session")
def single_run(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    r = protect(demo_data, out)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r


def test_single_process_run_writes_every_face_within_eps(single_run, demo_data):
    out, r = single_run
    rows = manifest(out)
    ids = sorted(p.stem for p in demo_data["faces"].glob("*.png"))
    assert sorted(x["id"] for x in rows) == ids
    for x in rows:
        assert x["status"] == "ok" and x["method"] == "mim" and x["surrogates"] == ["arcface-mbf"]
        assert x["eps_levels"] == 12 and x["steps"] == 4 and x["target"] in {"astronaut", "player_gdp_0", "player_gdp_1", "player_gdp_2"}
        assert not Path(x["output"]).is_absolute()  # relative to the run folder: a moved run still reads
        diff = np.abs(pixels(out / x["output"]) - pixels(x["source"])).max()
        assert diff == x["linf"] <= 12 and diff > 0
    assert (out / "config.yaml").is_file() and "mim" in (out / "config.yaml").read_text()
    assert "10 faces: 10 protected, 0 failed" in r.stdout
    from tipim.lightning.cli import build_protect

    again = build_protect(["--config", str(out / "config.yaml")])  # the saved config rebuilds the run, its nulls included:
    assert again.model.method == "mim" and again.model.attack.transform is None and again.model.attack.objective.away == 1.0  # not the photo defaults
    assert type(again.datamodule).__name__ == "ProtectDataModule" and again.datamodule.output_dir == str(out)


@pytest.mark.slow
def test_two_process_ddp_writes_each_face_once_and_matches_one_process(single_run, demo_data, tmp_path):
    ref, _ = single_run
    r = protect(demo_data, tmp_path / "ddp", devices=2)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = manifest(tmp_path / "ddp")
    assert len(rows) == 10 and len({x["id"] for x in rows}) == 10
    assert {x["rank"] for x in rows} == {0, 1}  # both processes did work
    for x in rows:
        assert np.array_equal(pixels(tmp_path / "ddp" / x["output"]), pixels(ref / "images" / f"{x['id']}.png")), x["id"]


@pytest.mark.slow
def test_batch_size_and_process_count_change_no_face(demo_data, tmp_path):
    """TIP-IM with every random part and the MMD term on: batch 16 in one process and batch 8 in
    two processes write the same pixels. float64, where the models' kernels are batch-size free
    (in float32 they round differently per batch size; the algorithm is the same)."""
    common = ("--config", "configs/method/tipim.yaml", "--model.random_start", "true", "--model.steps", "3", "--trainer.precision", "64-true")
    one = protect(demo_data, tmp_path / "b16", *common, "--data.batch_size", "16")
    two = protect(demo_data, tmp_path / "b8x2", *common, "--data.batch_size", "8", devices=2)
    assert one.returncode == 0 and two.returncode == 0, one.stdout + one.stderr + two.stdout + two.stderr
    rows = manifest(tmp_path / "b16")
    assert len(rows) == 10 and {x["rank"] for x in manifest(tmp_path / "b8x2")} == {0, 1}
    for x in rows:
        assert np.array_equal(pixels(tmp_path / "b16" / x["output"]), pixels(tmp_path / "b8x2" / x["output"])), x["id"]
    bad = protect(demo_data, tmp_path / "b12", "--config", "configs/method/tipim.yaml", "--data.batch_size", "12")
    assert bad.returncode != 0 and "batch_size 12 is not a multiple of model.mmd_group 8" in bad.stdout + bad.stderr
    assert not (tmp_path / "b12" / "manifest.jsonl").exists()


@pytest.mark.slow
def test_a_killed_run_resumes_without_losing_or_duplicating(single_run, demo_data, tmp_path):
    """Killed (SIGKILL) at a known point: the 4th image is written to its temporary file and not
    yet renamed. The resumed run removes the leftover, writes the rest, and every image equals
    the uninterrupted run's."""
    ref, _ = single_run
    out = tmp_path / "killed"
    p = protect(demo_data, out, background=True, env={"TIPIM_CRASH_AT": "before_rename:4"})
    p.communicate(timeout=600)
    assert p.returncode == -signal.SIGKILL
    assert len(manifest(out)) == 3 and len(list(out.rglob("*.part"))) == 1  # killed mid-write, as planned
    r = protect(demo_data, out)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = manifest(out)
    assert sorted(x["id"] for x in rows) == sorted({x["id"] for x in rows})  # no id twice
    assert len(rows) == 10
    assert not list(out.rglob("*.part"))  # no half-written file left behind
    for x in rows:
        assert np.array_equal(pixels(out / x["output"]), pixels(ref / "images" / f"{x['id']}.png")), x["id"]


def test_a_second_run_on_the_same_folder_is_refused(demo_data, tmp_path):
    from tipim.files import RunLock

    out = tmp_path / "busy"
    lock = RunLock(out).acquire()  # a live run holds the folder
    try:
        r = protect(demo_data, out)
    finally:
        lock.release()
    assert r.returncode == 2 and f"another tipim run (pid {os.getpid()})" in r.stderr and "--out" in r.stderr
    assert not (out / "manifest.jsonl").exists()
    r = protect(demo_data, out, "--model.steps", "1", "--data.limit", "2")  # once free, it runs
    assert r.returncode == 0, r.stdout + r.stderr


def test_bad_faces_are_reported_and_the_rest_protected(demo_data, tmp_path):
    faces = tmp_path / "faces"
    shutil.copytree(demo_data["faces"], faces)
    (faces / "broken.png").write_bytes(b"\x89PNG not really")
    Image.new("RGB", (250, 250)).save(faces / "not_aligned.png")
    r = protect({"faces": faces, "targets": demo_data["targets"]}, tmp_path / "out", "--model.steps", "1")
    assert r.returncode == 1  # something failed
    rows = {x["id"]: x for x in manifest(tmp_path / "out")}
    assert rows["broken"]["status"] == "error" and "broken.png" in rows["broken"]["error"]
    assert "tipim data align" in rows["not_aligned"]["error"]
    assert sum(x["status"] == "ok" for x in rows.values()) == 10
    assert "12 faces: 10 protected, 2 failed" in r.stdout


def test_unknown_model_and_missing_folder_give_clear_errors(demo_data, tmp_path):
    r = protect(demo_data, tmp_path / "o", "--model.surrogates", "[resnet-nope]")
    assert r.returncode == 2 and "unknown zoo model 'resnet-nope'" in r.stderr and "tipim models list" in r.stderr
    r = protect({"faces": tmp_path / "nowhere", "targets": demo_data["targets"]}, tmp_path / "o2")
    assert r.returncode == 2 and "nowhere" in r.stderr
    r = protect(demo_data, tmp_path / "o3", "--model.norm", "l2")  # each bound in its own unit
    assert r.returncode == 2 and "model.norm l2 needs model.eps_l2" in r.stderr
    r = protect(demo_data, tmp_path / "o4", "--model.eps_l2", "0.5")
    assert r.returncode == 2 and "model.eps_levels (8-bit levels)" in r.stderr
    assert not (tmp_path / "o3" / "manifest.jsonl").exists() and not (tmp_path / "o4" / "manifest.jsonl").exists()


def test_yaml_surrogates_mix_zoo_names_and_user_models(tmp_path, demo_data):
    """A user's TorchScript model and a zoo model, declared in YAML, make a weighted ensemble."""
    import torch
    import yaml

    from tipim.lightning.cli import build_protect
    from tipim.models import Ensemble, TorchScriptEmbedder

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, stride=8), torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 32))
    torch.jit.save(torch.jit.trace(net.eval(), torch.rand(1, 3, 112, 112)), tmp_path / "mine.pt")
    cfg = {
        "model": {
            "surrogates": [
                "arcface-mbf",
                {"class_path": "tipim.models.TorchScriptEmbedder", "init_args": {"path": str(tmp_path / "mine.pt"), "name": "mine"}},
            ],
            "surrogate_weights": [2.0, 1.0],
        },
        "data": {"faces": str(demo_data["faces"]), "targets": str(demo_data["targets"]), "output_dir": str(tmp_path / "o")},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cli = build_protect(["--config", "configs/protect.yaml", "--config", str(tmp_path / "c.yaml"), "--trainer.accelerator", "cpu"])
    sur = cli.model.attack.surrogate
    assert isinstance(sur, Ensemble) and isinstance(sur.members[1], TorchScriptEmbedder)
    assert cli.model.surrogate_names == ["arcface-mbf", "mine"]
    assert torch.allclose(sur.weights, torch.tensor([2 / 3, 1 / 3]))
    assert sur(torch.rand(2, 3, 112, 112)).shape == (2, 512 + 32)


@pytest.mark.slow
def test_wandb_offline_run_logs_attack_statistics_and_only_requested_images(demo_data, tmp_path):
    def run(out, *extra):
        r = protect(
            demo_data, out, "--model.steps", "1", "--data.limit", "2",
            "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
            "--trainer.logger.save_dir", str(out), "--trainer.logger.project", "tipim-test", *extra, fresh=True,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        (run_dir,) = (out / "wandb").glob("offline-run-*")
        return run_dir

    os.environ["WANDB_MODE"] = "offline"
    try:
        plain = run(tmp_path / "plain")
        with_faces = run(tmp_path / "faces", "--model.log_images", "2")
    finally:
        os.environ["WANDB_MODE"] = "disabled"
    logged = next(plain.glob("run-*.wandb")).read_bytes()
    for key in (b"attack/objective_last", b"attack/surrogate_success", b"attack/faces_per_s", b"surrogates"):
        assert key in logged, key
    assert not list(plain.rglob("*.png"))  # no face leaves the machine unless asked
    assert len(list(with_faces.rglob("media/images/faces/*.png"))) == 2


def test_a_limit_below_one_is_refused_with_its_name(tmp_path):
    from tipim.lightning.data import ProtectDataModule

    faces = tmp_path / "faces"
    faces.mkdir()
    Image.fromarray(np.full((112, 112, 3), 128, np.uint8)).save(faces / "a.png")
    dm = ProtectDataModule(str(faces), str(faces), output_dir=str(tmp_path / "run"), limit=0)
    with pytest.raises(ValueError, match="data.limit must be at least 1"):
        dm.setup()
    dm = ProtectDataModule(str(faces), str(faces), output_dir=str(tmp_path / "run"), limit=1)
    dm.setup()
    assert [i.id for i in dm.items] == ["a"] and dm.target_names == ["a"]
