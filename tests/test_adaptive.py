"""The adaptive attackers (issue 24): their training data, networks, Lightning training and scoring."""

import json

import pytest
import torch

from conftest import REPO, need_model, run_tipim


def test_purifier_starts_as_the_identity_and_says_what_shape_it_takes():
    from tipim.adaptive.purifier import PurifierNet

    net = PurifierNet(width=8)
    x = torch.rand(2, 3, 112, 112)
    assert torch.equal(net(x), x)  # zero-initialised output: training starts from "change nothing"
    with torch.no_grad():
        net.out.bias.fill_(5.0)
    assert net(x).min() == 1.0  # outputs stay pixels
    with pytest.raises(ValueError, match=r"divisible by 4, got \(2, 3, 110, 110\)"):
        net(torch.rand(2, 3, 110, 110))


def test_pair_dataset_flips_both_crops_of_a_pair_together():
    from tipim.adaptive.data import PairDataset

    clean = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8)
    prot = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8)
    ds = PairDataset(clean, prot, augment=True)
    torch.manual_seed(0)
    flips = 0
    for _ in range(20):
        item = ds[1]
        c, p = clean[1].float() / 255, prot[1].float() / 255
        same = torch.equal(item["clean"], c) and torch.equal(item["protected"], p)
        flipped = torch.equal(item["clean"], c.flip(-1)) and torch.equal(item["protected"], p.flip(-1))
        assert same or flipped
        flips += flipped
    assert 0 < flips < 20
    with pytest.raises(ValueError, match="two \\(N, 3, 112, 112\\) tensors"):
        PairDataset(clean, prot[:, :, :100])


@pytest.mark.slow
def test_each_attacker_trains_on_real_pairs_resumes_and_scores(lfw, tmp_path):
    """Pairs from a real protect run of people outside an excluded set, one training step of
    the purifier, the adapted recogniser and the student, a resumed step, and a scored row."""
    for m in ("mtcnn", "arcface-mbf", "sface", "edgeface-s"):
        need_model(m)
    from tipim.adaptive.__main__ import main as fit
    from tipim.adaptive.attackers import Purified, load_attackers
    from tipim.adaptive.pairs import collect_pairs, make_pair_set

    people = sorted(p.name for p in lfw.iterdir() if p.is_dir())
    keep = set(people[100:105])
    meta = make_pair_set(lfw, tmp_path / "train", people=3, sizes=(40, 110), seed=0, exclude=set(people) - keep)
    assert {r["identity"] for r in meta["people"]} <= keep and [r["face_px"] for r in meta["people"]] == [40, 110, 40]
    photos = tmp_path / "train" / "photos"
    run = tmp_path / "train" / "run"
    r = run_tipim(["protect", photos, "--out", run, "--preset", "fast", "--model.steps", "3", "--check", "none"])
    assert r.returncode == 0, r.stderr
    pairs = collect_pairs(photos, run)
    assert pairs["clean"].shape == pairs["protected"].shape == (3, 3, 112, 112) and sorted(pairs["ids"]) == sorted(keep & {r["identity"] for r in meta["people"]})
    diff = (pairs["protected"].int() - pairs["clean"].int()).abs()
    assert 0 < diff.max() <= 13  # one alignment for both: a crop pixel mixes photo pixels that moved by <= 12
    # the tiny set, repeated so each split has a batch
    torch.save({k: (v.repeat(4, 1, 1, 1) if torch.is_tensor(v) else v * 4) for k, v in pairs.items()}, tmp_path / "pairs.pt")

    def train(config, out, *extra):
        fit(["fit", "--config", str(REPO / "configs" / "adaptive" / config), "--data.pairs", json.dumps([str(tmp_path / "pairs.pt")]),
             "--data.batch_size", "4", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
             "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
             "--trainer.callbacks.init_args.dirpath", str(out / "checkpoints"), *extra])
        ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
        return ckpt

    ckpt = train("purifier.yaml", tmp_path / "purifier")
    assert ckpt["global_step"] == 1 and ckpt["state_dict"]["net.out.weight"].abs().sum() > 0  # it learned something
    assert train("purifier.yaml", tmp_path / "purifier", "--ckpt_path", "last", "--trainer.max_steps", "2")["global_step"] == 2  # resumed, not restarted
    assert (tmp_path / "purifier" / "lightning_logs").is_dir()
    start = load_attackers("a", tmp_path / "purifier" / "checkpoints" / "last.ckpt", ["sface"])
    for config, dim in (("adapted.yaml", 512), ("student.yaml", 512)):
        ckpt = train(config, tmp_path / config)
        assert ckpt["global_step"] == 1
        (name, model), = load_attackers("b", tmp_path / config / "checkpoints" / "last.ckpt", ["sface"]).items()
        assert model(torch.rand(2, 3, 112, 112)).shape == (2, dim)
    # the student's head starts as the ridge map into the teacher's space (a random head: cosine ~0);
    # these faces are its training faces, so the map must land near the teacher's embedding
    from tipim.models import ZooEmbedder

    faces = pairs["clean"].float() / 255
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model(faces), ZooEmbedder("edgeface-s")(faces))
    assert cos.mean() > 0.5

    # a trained attacker as a surrogate: masks can be optimised through it
    from tipim.adaptive.attackers import TrainedAttacker
    from tipim.models import Ensemble

    ens = Ensemble([ZooEmbedder("sface"), TrainedAttacker(str(tmp_path / "purifier" / "checkpoints" / "last.ckpt"), "sface")])
    assert ens.dim == 256 and ens.members[1].name.endswith(".sface")
    x = torch.rand(1, 3, 112, 112, requires_grad=True)
    ens(x).sum().backward()
    assert x.grad.abs().sum() > 0 and not any(p.requires_grad for p in ens.members[1].parameters())
    # ... and through `tipim protect --config configs/adaptive/defended.yaml`, pointed at this run's adapted checkpoint
    import yaml

    defended = yaml.safe_load((REPO / "configs" / "adaptive" / "defended.yaml").read_text())
    defended["model"]["surrogates"][1]["init_args"]["checkpoint"] = str(tmp_path / "adapted.yaml" / "checkpoints" / "last.ckpt")
    (tmp_path / "defended.yaml").write_text(yaml.safe_dump(defended))
    one = sorted(photos.iterdir())[0]
    r = run_tipim(["protect", one, "--out", tmp_path / "defended", "--config", tmp_path / "defended.yaml", "--preset", "fast",
                   "--model.steps", "1", "--check", "none"])
    assert r.returncode == 0, r.stderr
    (rec,) = [json.loads(line) for line in (tmp_path / "defended" / "manifest.jsonl").read_text().splitlines()]
    assert rec["status"] == "ok" and rec["surrogates"][0] == "arcface-mbf" and rec["surrogates"][1].startswith("attacker-"), rec
    (name, purified), = start.items()
    assert name.startswith("a-") and name.endswith(".sface") and isinstance(purified, Purified)

    # the purifier as the attacker's recogniser in the field benchmark: a row of its own
    from tipim.evaluation.field import make_field_set, score_field
    from tipim.files import append_jsonl

    field = make_field_set(lfw, tmp_path / "field", probes=2, distractors=3, sizes=(80,), seed=3)
    clean_run = tmp_path / "runs" / "clean@80"
    (clean_run / "images").mkdir(parents=True)
    for p in field["probes"]:
        (clean_run / "images" / f"{p['identity']}.png").write_bytes((tmp_path / "field" / "photos-80" / f"{p['identity']}.png").read_bytes())
        append_jsonl(clean_run / "manifest.jsonl", {"id": p["identity"], "status": "ok", "output": f"images/{p['identity']}.png",
                                                    "method": "x", "surrogates": ["arcface-mbf"], "faces": [{"box": [0, 0, 40, 40]}]})
    (row,) = score_field(tmp_path / "field", {"clean@80": clean_run}, start, jpegs=(0,))
    assert row["model"] == name and row["n"] == 2 and row["protected"] == row["clean_protected"]  # written = clean
    assert (tmp_path / "field" / f"gallery-{name}.pt").is_file()  # its own gallery, purified too


def test_a_missing_or_foreign_checkpoint_is_named(tmp_path):
    from tipim.adaptive.attackers import load_attackers

    with pytest.raises(FileNotFoundError, match="python -m tipim.adaptive fit"):
        load_attackers("x", tmp_path / "nope.ckpt", ["sface"])
    torch.save({"state_dict": {"other.w": torch.zeros(1)}}, tmp_path / "odd.ckpt")
    with pytest.raises(ValueError, match="neither a purifier"):
        load_attackers("x", tmp_path / "odd.ckpt", ["sface"])
