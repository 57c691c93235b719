"""Protection on ordinary photos, against recognisers the mask never met (issue 11's benchmark).

    python benchmarks/photo_transfer.py prepare --lfw ../shared/data/lfw --out runs/field --probes 40
    tipim protect runs/field/photos-55 --out runs/field/runs/balanced@55            # any tipim version, any preset
    python benchmarks/photo_transfer.py score --field runs/field --runs runs/field/runs/*@* \
        --surrogates balanced=arcface-mbf --out results/photo_transfer
    python benchmarks/photo_transfer.py table SCORED_FOLDER... --out results/photo_transfer   # merge
    python benchmarks/photo_transfer.py pool SCORED_FOLDER... --out results/photo_transfer/pooled
        # held-out rows of several field sets as one table, each person once, with 90% intervals
    python benchmarks/photo_transfer.py score ... --attackers purifier=CKPT adapted=CKPT --no-zoo
        # adaptive attackers trained on tipim's outputs (benchmarks/adaptive_attack.py)
    python benchmarks/photo_transfer.py loo --field runs/field --sizes 40 55 --out results/photo_transfer/loo
        # for each zoo model: masks made on the others (an ensemble), scored on the held-out one

A run folder is named ``<label>@<face px>``; ``--surrogates label=a,b`` stars its white-box cells
and records what made its masks (``pool`` needs it).
"""

from __future__ import annotations

import argparse
import os
import json
from pathlib import Path

import torch

from tipim.zoo.registry import MODELS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--lfw", default="../shared/data/lfw")
    p.add_argument("--out", default="runs/field")
    p.add_argument("--probes", type=int, default=40)
    p.add_argument("--distractors", type=int, default=400)
    p.add_argument("--sizes", type=int, nargs="+", default=[40, 55, 110])
    p.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score")
    s.add_argument("--field", default="runs/field")
    s.add_argument("--runs", nargs="+", required=True)
    s.add_argument("--models", nargs="+", default=list(MODELS), help="recognisers to score with (default: every zoo model)")
    s.add_argument("--jpeg", type=int, nargs="+", default=[0, 75])
    s.add_argument("--resample", nargs="+", default=["warp"], choices=["warp", "area"], help="the attacker's crop: the aligner's warp, and/or an area resize of the photo first")
    s.add_argument("--purify", nargs="+", default=[""], help="what the attacker does to each photo, e.g. median:5 nlm:10 'median:3+jpeg:75' ('' = nothing)")
    s.add_argument("--attackers", nargs="*", default=[], help="label=CHECKPOINT of a trained adaptive attacker (python -m tipim.adaptive): a purifier is scored in front of each of --models, an adapted recogniser as itself")
    s.add_argument("--no-zoo", action="store_true", help="score only the --attackers (with --models as the purifiers' recognisers)")
    s.add_argument("--surrogates", nargs="*", default=[], help="label=model,model: white-box cells to star")
    s.add_argument("--out", required=True)
    t = sub.add_parser("table", help="one table from several score folders (rows as scored)")
    t.add_argument("folders", nargs="+")
    t.add_argument("--surrogates", nargs="*", default=[])
    t.add_argument("--out", required=True)
    pl = sub.add_parser("pool", help="held-out rows of several field sets (score folders) as one table, each person counted once")
    pl.add_argument("folders", nargs="+")
    pl.add_argument("--out", required=True)
    o = sub.add_parser("loo", help="leave-one-out: protect with every zoo model but one, score that one")
    o.add_argument("--field", default="runs/field")
    o.add_argument("--models", nargs="+", default=["arcface-mbf", "sface", "facenet", "dlib-resnet"], help="each is held out in turn (--held-out: only these) and the others make its masks (the committed loo/ runs used these four)")
    o.add_argument("--sizes", type=int, nargs="+", default=[40, 55, 110])
    o.add_argument("--jpeg", type=int, nargs="+", default=[0, 75])
    o.add_argument("--limit", type=int, default=24, help="people per run (the same seeded subset)")
    o.add_argument("--protect", default="--preset balanced", help="tipim protect flags for every run")
    o.add_argument("--held-out", nargs="+", default=None, help="hold out only these (default: each of --models)")
    o.add_argument("--name", default="loo", help="run folders are runs/<name>-<held out>@<px> (a new name = new runs)")
    o.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    from tipim.evaluation.field import make_field_set, markdown, score_field

    if a.cmd == "prepare":
        f = make_field_set(a.lfw, a.out, a.probes, a.distractors, a.sizes, a.seed)
        print(f"{a.out}: {len(f['probes'])} people at face sizes {a.sizes}; gallery of {len(f['gallery'])} photos")
        return
    if a.cmd == "loo":
        return leave_one_out(a)
    if a.cmd == "pool":
        return pool(a)
    if a.cmd == "table":
        rows = [r for f in a.folders for r in read_rows(f)]
    else:
        from tipim.models import ZooEmbedder

        models = {} if a.no_zoo else {m: ZooEmbedder(m) for m in a.models}
        if a.attackers:
            from tipim.adaptive.attackers import load_attackers

            for label, ckpt in (x.split("=", 1) for x in a.attackers):
                models |= load_attackers(label, ckpt, a.models)
        runs = {Path(r).name: r for r in a.runs}
        rows = score_field(a.field, runs, models, a.jpeg, a.resample, a.purify)
    white = {k: v.split(",") for k, v in (x.split("=", 1) for x in a.surrogates)}
    for r in rows:  # what made each run's masks, for the held-out tables (pool)
        if r["run"] in white:
            r["surrogates"] = "+".join(white[r["run"]])
    write_rows(a.out, rows)
    write_table(a.out, markdown(rows, white))


def read_rows(folder) -> list[dict]:
    return json.loads((Path(folder) / "results.json").read_text())


def write_rows(folder, rows: list[dict]) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")


def write_table(folder, table: str) -> None:
    (Path(folder) / "results.md").write_text(table)
    print(table)


def pool(a) -> None:
    """One held-out table from several field sets' score folders (rows of a surrogate's own
    model, white box, are left out); with purifications also ``by_transform.md``."""
    from tipim.evaluation.field import held_out_markdown, pool_rows

    sets = []
    for f in a.folders:
        rows = read_rows(f)
        if any("surrogates" not in r for r in rows):
            raise SystemExit(f"{f}: rows without the models that made their masks; score with --surrogates LABEL=MODEL")
        sets.append([r for r in rows if r["model"] not in r["surrogates"].split("+")])
    rows = sorted(pool_rows(sets), key=lambda r: (r["model"], r["face_px"], r["jpeg"], r.get("resample", ""), r.get("purify", "")))
    write_rows(a.out, rows)
    write_table(a.out, held_out_markdown(rows))
    if any(r.get("purify") for r in rows):  # the attacker's transforms: one line each, clean Rank-1 beside protection
        from tipim.evaluation.field import purification_markdown

        (Path(a.out) / "by_transform.md").write_text(purification_markdown(rows))


def leave_one_out(a) -> None:
    """Run (or resume) one protect run per held-out model and face size, then score each run on
    its held-out model only; writes commands.txt (re-runnable), results.json and results.md."""
    import shlex
    import subprocess
    import sys

    from tipim.evaluation.field import held_out_markdown, score_field
    from tipim.models import ZooEmbedder

    out, field = Path(a.out), Path(a.field)
    out.mkdir(parents=True, exist_ok=True)
    tipim = str(Path(sys.executable).with_name("tipim"))
    rows, commands = [], []
    for held in a.held_out or a.models:
        members = [m for m in a.models if m != held]
        model = {held: ZooEmbedder(held)}
        for px in a.sizes:
            run = field / "runs" / f"{a.name}-{held}@{px}"
            cmd = [tipim, "protect", str(field / f"photos-{px}"), "--out", str(run), "--data.limit", str(a.limit),
                   *shlex.split(a.protect), "--model.surrogates", json.dumps(members)]
            commands.append(shlex.join(["tipim", *cmd[1:]]))
            subprocess.run(cmd, check=False)  # exit 1 = some photo had no face; the manifest says which
            for r in score_field(field, {run.name: run}, model, a.jpeg):
                rows.append(r | {"surrogates": "+".join(members)})
            write_rows(out, rows)
    (out / "commands.txt").write_text("\n".join(commands) + "\n")
    write_table(out, held_out_markdown(rows))


if __name__ == "__main__":
    main()
