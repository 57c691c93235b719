"""Cheaper greedy insertion (issue 12, item 3): try only the m targets nearest each face.

Runs TIP-IM (the paper's greedy choice every step, configs/method/tipim.yaml) on seeded protocol
probes with every target (exact) and with shortlists of m, all in this one run on this machine;
then reports
- how often the exact run's choice was among the m nearest targets (then a shortlist of m >= 2
  makes the same choice from the same state; m = 1 follows the nearest target of the step's
  transformed embedding instead, see ``GreedyInsertion``), from the manifest's ``greedy_places``;
- targeted / untargeted success on a white-box and a held-out model (``tipim evaluate``);
- seconds per face, as a ratio to the exact run.

    python benchmarks/greedy_shortlist.py --limit 24 --shortlist 1 2 3 --out results/greedy_shortlist
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", default="results/reproduce/protocol.json")
    ap.add_argument("--root", default="data/lfw-aligned")
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--shortlist", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--surrogate", default="arcface-mbf")
    ap.add_argument("--held-out", default="sface")
    ap.add_argument("--extra", default="", help="more tipim protect flags for every run")
    ap.add_argument("--runs", default="runs/shortlist")
    ap.add_argument("--out", default="results/greedy_shortlist")
    a = ap.parse_args()
    tipim = str(Path(sys.executable).with_name("tipim"))
    out, runs = Path(a.out), Path(a.runs)
    out.mkdir(parents=True, exist_ok=True)
    commands, seconds = [], {}
    for m in [0, *a.shortlist]:
        name = "exact" if m == 0 else f"shortlist{m}"
        cmd = [tipim, "protect", "--config", "configs/protect.yaml", "--config", "configs/method/tipim.yaml",
               "--data.faces", a.protocol, "--data.targets", a.protocol, "--data.root", a.root,
               "--data.output_dir", str(runs / name), "--data.limit", str(a.limit), "--data.limit_seed", "0",
               "--model.method", name, "--model.surrogates", f"[{a.surrogate}]",
               "--model.selector.init_args.shortlist", str(m), "--trainer.enable_progress_bar", "false", *shlex.split(a.extra)]
        commands.append(shlex.join(["tipim", *cmd[1:]]))
        if (runs / name / "manifest.jsonl").exists():
            raise SystemExit(f"{runs / name} exists; remove {runs} to measure afresh (times must come from one run)")
        subprocess.run(cmd, check=True)
        seconds[name] = sum(json.loads(line).get("seconds", 0) for line in (runs / name / "manifest.jsonl").read_text().splitlines())
    rows = [json.loads(line) for line in (runs / "exact" / "manifest.jsonl").read_text().splitlines()]
    places = [0] * 10
    for r in rows:
        for i, c in enumerate(r.get("greedy_places", [])):
            places[i] += c
    total = sum(places)
    ev = [tipim, "evaluate", "--protocol", a.protocol, "--aligned", a.root, "--models", a.surrogate, a.held_out,
          "--out", str(out / "evaluate"), "--runs", *[str(runs / n) for n in seconds]]
    commands.append(shlex.join(["tipim", *ev[1:]]))
    subprocess.run(ev, check=True)
    results = json.loads((out / "evaluate" / "results.json").read_text())
    cell = {(r["method"], r["eval_model"]): r for r in results}
    lines = [
        f"# Greedy insertion with a shortlist: {a.limit} protocol probes, {a.surrogate}, TIP-IM greedy every step, this machine",
        "",
        f"Exact greedy's choices by the chosen target's place in nearness to the face at that step ({total} choices):",
        "",
        "| shortlist m | exact choices among the m nearest |",
        "|---|---|",
        *[f"| {m} | {100 * sum(places[:m]) / max(total, 1):.1f}% |" for m in range(1, 11) if m <= 5 or m == 10],
        "",
        f"Success (%, Rank-1 targeted / untargeted) on {a.surrogate} (white box) and {a.held_out} (held out), and time:",
        "",
        f"| run | {a.surrogate} T | {a.surrogate} UT | {a.held_out} T | {a.held_out} UT | PSNR | seconds per face | time vs exact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in seconds.items():
        w, h = cell[(name, a.surrogate)], cell[(name, a.held_out)]
        lines.append(
            f"| {name} | {100 * w['rank1_t']:.1f} | {100 * w['rank1_ut']:.1f} | {100 * h['rank1_t']:.1f} | {100 * h['rank1_ut']:.1f} "
            f"| {w['psnr']:.2f} | {s / a.limit:.2f} | {s / seconds['exact']:.2f} |"
        )
    lines += ["", "Seconds: the attack's time per face from the manifests (model loading and writing left out), runs one after another.", "",
              "Commands:", "", "```bash", *commands, "```", ""]
    (out / "results.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps({"places": places, "seconds": seconds, "limit": a.limit, "evaluate": results}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
