"""Protocol, rank metrics (against hand-made rankings, and reduced across 2 gloo processes),
and `tipim evaluate` end to end on real LFW faces with a W&B offline run read back."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import need_model, run_tipim
from tipim.evaluation.metrics import RankSuccess, SetMMD
from tipim.evaluation.protocol import build_protocol


def fake_tree(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (4, 4)).save(root / name / f"{name}_{i:04d}.png")
    return root


def test_protocol_split_is_disjoint_bounded_and_seeded(tmp_path):
    counts = {f"p{i:03d}": 1 + (i % 7) + (40 if i % 25 == 0 else 0) for i in range(120)}
    root = fake_tree(tmp_path / "tree", counts)
    p = build_protocol(root, seed=3, n_protected=20, n_targets=5, n_distractors=30, target_images=(3, 6))
    assert len(p["probes"]) == 20 and len(p["targets"]) == 5 and len(p["distractor_identities"]) == 30
    prot, tgt, dis = set(p["protected_identities"]), set(p["target_identities"]), set(p["distractor_identities"])
    assert not (prot & tgt or prot & dis or tgt & dis)
    assert all(3 <= counts[t] <= 6 for t in tgt)  # no target floods the gallery
    gallery = {g["path"] for g in p["gallery"]}
    assert not gallery & {x["path"] for x in p["probes"]}  # a probe is never in the gallery
    assert not gallery & {x["path"] for x in p["targets"]}  # nor an optimisation image
    for t in tgt:  # the rest of each target's images are
        assert sum(g["identity"] == t for g in p["gallery"]) == counts[t] - 1
    for d in dis:
        assert sum(g["identity"] == d for g in p["gallery"]) == counts[d]
    assert p == build_protocol(root, seed=3, n_protected=20, n_targets=5, n_distractors=30, target_images=(3, 6))
    assert p != build_protocol(root, seed=4, n_protected=20, n_targets=5, n_distractors=30, target_images=(3, 6))
    with pytest.raises(ValueError, match="targets"):
        build_protocol(root, n_targets=500)


def test_paper_sized_protocol_on_lfw(lfw):
    p = build_protocol(lfw, seed=0)
    assert len(p["probes"]) == 500 and len(p["targets"]) == 10 and len(p["distractor_identities"]) == 500
    assert all(3 <= len(list((lfw / t).iterdir())) <= 10 for t in p["target_identities"])


def test_rank_success_on_hand_made_rankings():
    # gallery identities: 0 0 1 2 3 4 5 6 ; targets {5, 6}; two probes of identity 0
    g = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6])
    scores = torch.tensor(
        [
            [0.1, 0.0, 0.2, 0.3, 0.4, 0.5, 0.9, 0.6],  # nearest: 5(target), 6(target), 4, 3, 2 -> t@1, t@5, ut@1, ut@5
            [0.95, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.0],  # nearest: 0(true) -> no success at all
        ]
    )
    m = RankSuccess()
    m.update(scores, g, torch.tensor([0, 0]), torch.tensor([5, 6]))
    r = m.compute()
    assert r["rank1_t"] == 0.5 and r["rank5_t"] == 1.0  # probe 2's top 5 holds identity 5
    assert r["rank1_ut"] == 0.5 and r["rank5_ut"] == 0.5
    with pytest.raises(ValueError, match="scores"):
        m.update(scores[:, :3], g, torch.tensor([0, 0]), torch.tensor([5]))


def _ddp_worker(rank, world, init_file, scores, g, true, tgt, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    m = RankSuccess()
    m.update(scores[rank::world], g, true[rank::world], tgt)  # uneven shards
    r = m.compute()  # a collective: every rank calls it
    if rank == 0:
        torch.save({k: float(v) for k, v in r.items()}, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_rank_success_reduces_across_two_processes(tmp_path):
    torch.manual_seed(0)
    scores, g = torch.rand(7, 40), torch.randint(0, 9, (40,))
    true, tgt = torch.randint(0, 9, (7,)), torch.tensor([3, 4])
    single = RankSuccess()
    single.update(scores, g, true, tgt)
    want = {k: float(v) for k, v in single.compute().items()}
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), scores, g, true, tgt, str(tmp_path / "r.pt")), nprocs=2)
    assert torch.load(tmp_path / "r.pt") == pytest.approx(want)


def test_set_mmd_is_zero_for_identical_sets_and_positive_otherwise():
    x = torch.rand(6, 3, 8, 8)
    m = SetMMD()
    m.update(x, x)
    assert float(m.compute()) == pytest.approx(0.0, abs=1e-6)
    m2 = SetMMD()
    m2.update((x + 0.2).clamp(0, 1), x)
    assert float(m2.compute()) > 0


@pytest.fixture(scope="module")
def lfw_protocol(lfw, tmp_path_factory):
    need_model("mtcnn")
    from tipim.align.aligner import align_folder

    src = tmp_path_factory.mktemp("lfwsub")
    people = ["Abel_Pacheco", "Akhmed_Zakayev", "Amber_Tamblyn", "Anders_Fogh_Rasmussen", "Angela_Bassett", "Ann_Veneman", "Aaron_Peirsol", "Adrien_Brody", "Alan_Greenspan"]
    for p in people:
        (src / p).mkdir()
        for f in sorted((lfw / p).iterdir())[:4]:
            (src / p / f.name).write_bytes(f.read_bytes())
    aligned = tmp_path_factory.mktemp("aligned")
    align_folder(src, aligned, workers=2, progress=False)
    proto = build_protocol(aligned, seed=1, n_protected=4, n_targets=2, n_distractors=3, target_images=(2, 4))
    path = aligned / "protocol.json"
    path.write_text(json.dumps(proto))
    return path


@pytest.mark.slow
def test_evaluate_end_to_end_with_wandb_offline(lfw_protocol, tmp_path):
    need_model("arcface-mbf")
    need_model("sface")
    repo = Path(__file__).resolve().parents[1]
    env = os.environ | {"OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    run = tmp_path / "run"
    r = run_tipim(["protect", "--config", "configs/protect.yaml", "--config", "configs/method/mim.yaml",
                   "--data.faces", lfw_protocol, "--data.targets", lfw_protocol, "--data.output_dir", run,
                   "--model.steps", "10", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"],
                  env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "eval"
    # a fresh process: W&B keeps a global run
    cmd = [sys.executable, "-m", "tipim.cli", "evaluate", "--protocol", str(lfw_protocol), "--runs", str(run),
           "--models", "arcface-mbf", "sface", "--out", str(out), "--wandb"]
    r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads((out / "results.json").read_text())
    assert [(x["eval_model"], x["white_box"]) for x in rows] == [("arcface-mbf", True), ("sface", False)]
    for x in rows:
        assert x["method"] == "mim" and x["n_probes"] == 4 and x["surrogates"] == ["arcface-mbf"]
        assert 0 <= x["rank1_t"] <= x["rank5_t"] <= 1 and 0 <= x["rank1_ut"] <= x["rank5_ut"] <= 1
        assert 20 < x["psnr"] < 60 and 0 < x["ssim"] < 1 and x["mmd"] >= 0
    assert rows[0]["rank1_t"] >= 0.5  # white box, 10 MIM steps: most probes already land on a target
    assert rows[0]["clean_rank1"] >= 0.75  # unprotected probes are recognised
    table = (out / "results.md").read_text()
    assert "| mim | arcface-mbf |" in table and " *" in table
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (b"results", b"mim/arcface-mbf/sface/rank1_t", b"protocol"):  # table, metrics, config
        assert key in logged, key
    (table,) = runs[0].glob("files/media/table/results_*.table.json")
    t = json.loads(table.read_text())
    assert t["columns"][:3] == ["method", "surrogates", "eval_model"] and len(t["data"]) == 2


@pytest.mark.slow
def test_photo_pipeline_protects_and_ranks_what_an_attacker_sees(lfw_protocol, tmp_path):
    """Whole LFW photos of the probes: protected, then re-encoded, re-detected and re-aligned."""
    need_model("arcface-mbf")
    run = tmp_path / "photos"
    r = run_tipim(["protect", lfw_protocol, "--out", run, "--targets", lfw_protocol, "--preset", "fast", "--faces", "center",
                   "--data.batch_size", "4", "--model.steps", "10", "--trainer.accelerator", "cpu"])
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "eval"
    r = run_tipim(["evaluate", "--protocol", lfw_protocol, "--runs", run, "--models", "arcface-mbf", "--pipeline", "photo",
                   "--jpeg", "0", "75", "--out", out])
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads((out / "results.json").read_text())
    assert [x["method"] for x in rows] == ["tipim-fast @png", "tipim-fast @jpeg75"]
    for x in rows:
        assert x["n_probes"] + x["n_probes_missing"] == 4 and x["n_probes"] >= 3  # re-detected
        assert 30 < x["psnr"] < 60  # measured on the full photos
    assert rows[0]["rank1_ut"] >= 0.5  # white box, as written: most probes no longer found at rank 1
    for q in (0, 75):
        view = run / f"attacker-jpeg{q}"
        crops = list((view / "images").rglob("*.png"))
        assert len(crops) == rows[0 if q == 0 else 1]["n_probes"]


def test_a_moved_run_reads_its_own_images_not_the_recorded_paths(tmp_path):
    from tipim.evaluation.evaluate import read_run
    from tipim.files import append_jsonl

    old, new = tmp_path / "old" / "run", tmp_path / "moved" / "run"
    for d in (old, new):
        (d / "images" / "A").mkdir(parents=True)
    # the run was made in `old`, copied to `new`; `old` now holds a different run's file
    Image.new("RGB", (4, 4), "red").save(old / "images" / "A" / "A_0001.png")
    Image.new("RGB", (4, 4), "blue").save(new / "images" / "A" / "A_0001.png")
    rec = {"id": "A/A_0001", "status": "ok", "method": "m", "surrogates": ["s"]}
    append_jsonl(new / "manifest.jsonl", rec | {"output": str(old / "images" / "A" / "A_0001.png")})
    append_jsonl(new / "manifest.jsonl", rec | {"id": "B/B_0001", "output": str(tmp_path / "elsewhere.png")})
    _, ok = read_run(new)
    assert ok["A/A_0001"]["output"] == str(new / "images" / "A" / "A_0001.png")
    assert ok["B/B_0001"]["output"] == str(tmp_path / "elsewhere.png")  # nothing beside it: kept as recorded


def test_reproduce_dry_run_lists_every_stage_as_commands_that_can_be_typed_again(tmp_path):
    out = tmp_path / "out"
    r = run_tipim(["reproduce", "--probes", "150", "--out", out, "--runs", tmp_path / "runs", "--stages", "table3", "schedule", "ensemble",
                   "--held", "facenet", "--protect-args", "--trainer.accelerator gpu", "--dry-run"])
    assert r.returncode == 0, r.stderr
    lines = [shlex.split(x) for x in r.stdout.splitlines()]
    assert not out.exists()  # a dry run writes nothing
    assert lines[0][:3] == ["tipim", "protocol", "build"]  # no protocol.json in --out yet
    protects = [x for x in lines if x[1] == "protect"]
    evals = [x for x in lines if x[1] == "evaluate"]
    names = [Path(x[x.index("--data.output_dir") + 1]).name for x in protects]
    assert names == ["mim", "dim", "mt-dim", "center-opt", "tipim", "tipim", "tipim-every2", "tipim-every5", "tipim-every10", "tipim-loo-facenet"]
    for x in protects:
        assert x[x.index("--data.limit") + 1] == "150" and x[x.index("--trainer.accelerator") + 1] == "gpu" and "..." not in x
    loo = protects[-1]
    assert loo[loo.index("--model.surrogates") + 1] == "[arcface-mbf,sface,dlib-resnet]"
    assert [Path(x[x.index("--out") + 1]).name for x in evals] == ["table3", "schedule", "ensemble"]
    assert [Path(p).name for p in evals[1][evals[1].index("--runs") + 1:]] == ["tipim", "tipim-every2", "tipim-every5", "tipim-every10"]


@pytest.mark.slow
def test_reproduce_runs_a_stage_records_its_commands_and_configs_and_stops_on_a_failure(lfw_protocol, tmp_path):
    need_model("arcface-mbf")
    out, runs = tmp_path / "out", tmp_path / "runs"
    out.mkdir()
    shutil.copy(lfw_protocol, out / "protocol.json")
    common = ["reproduce", "--stages", "table3", "--methods", "mim", "tipim", "--probes", "2", "--aligned", lfw_protocol.parent,
              "--out", out, "--runs", runs, "--eval-models", "arcface-mbf"]
    r = run_tipim([*common, "--protect-args", "--model.steps 2 --trainer.accelerator cpu"], env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads((out / "table3" / "results.json").read_text())
    assert [(x["method"], x["n_probes"]) for x in rows] == [("mim", 2), ("tipim", 2)]
    for name in ("mim", "tipim"):  # the resolved config of each run, beside the table
        cfg = (out / "table3" / "configs" / f"{name}.yaml").read_text()
        assert "steps: 2" in cfg and f"method: {name}" in cfg
    recorded = (out / "commands.txt").read_text().splitlines()
    assert [shlex.split(x)[1] for x in recorded] == ["protect", "protect", "evaluate"]
    again = run_tipim(shlex.split(recorded[0])[1:])  # typed again: the finished run is resumed, nothing redone
    assert again.returncode == 0, again.stderr
    assert sum(1 for _ in (runs / "mim" / "manifest.jsonl").open()) == 2
    bad = run_tipim([*common, "--protect-args", "--model.no_such_option 1"])
    assert bad.returncode == 1 and "this step failed" in bad.stderr and "--model.no_such_option" in bad.stderr
