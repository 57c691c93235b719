"""Seconds per photo of this checkout against an earlier commit, the two runs strictly alternating.

Two long-lived processes, one with the earlier commit's code (a temporary git worktree) and one
with this checkout's, each holding the same inputs and timing one photo through ``tipim protect``
the way ``bench_presets.py`` does (predict loop only: every model loaded). They take turns, one
photo each, the order swapped every round, so the other tenants of a shared machine (which move
whole runs by 10-30% within minutes) slow both sides of a round alike: each round's ratio is the
figure to read, and the median of the rounds the result.

    python benchmarks/bench_against.py 01144fd [--rounds 16] [--preset balanced] [--photo 250x250]
        [--out benchmarks/results/cpu_since_filing]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(preset: str, photo: str) -> None:
    """Answer each line on stdin with the seconds of one photo (the code on ``PYTHONPATH``)."""
    import logging

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_presets import photos, time_preset

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    tmp = Path(tempfile.mkdtemp())
    inputs = photos(tmp)
    print("ready", flush=True)
    for k, _ in enumerate(sys.stdin):
        _, seconds, rows = time_preset(preset, inputs[photo], tmp / f"run{k}", [])
        print(json.dumps({"seconds": seconds, "fooled": sum(f["surrogate_success"] for r in rows for f in r["faces"])}), flush=True)


class Side:
    def __init__(self, tree: Path, preset: str, photo: str):
        env = dict(os.environ, PYTHONPATH=str(tree / "src"))
        self.p = subprocess.Popen([sys.executable, __file__, "--worker", "--preset", preset, "--photo", photo], cwd=tree, env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if self.p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the benchmark process for {tree} did not start (run it alone to see why)")

    def once(self) -> dict:
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rev", nargs="?", help="the earlier commit (e.g. 01144fd, where issue 25 was filed)")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--preset", default="balanced")
    ap.add_argument("--photo", default="250x250", choices=["250x250", "1920x1080"])
    ap.add_argument("--out", default="benchmarks/results/cpu_since_filing")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.preset, a.photo)
    if not a.rev:
        ap.error("give the earlier commit to compare with")
    base = subprocess.run(["git", "rev-parse", "--short", a.rev], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=REPO, capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), base], cwd=REPO, check=True)
        try:
            sides = {"base": Side(tree, a.preset, a.photo), "head": Side(REPO, a.preset, a.photo)}
            for s in sides.values():
                s.once()  # warm: the first photo of a process pays one-off costs
            rounds = []
            for r in range(a.rounds):
                order = ("base", "head") if r % 2 == 0 else ("head", "base")
                got = {name: sides[name].once() for name in order}
                rounds.append({"base": round(got["base"]["seconds"], 3), "head": round(got["head"]["seconds"], 3),
                               "ratio": round(got["base"]["seconds"] / got["head"]["seconds"], 3),
                               "fooled": {k: v["fooled"] for k, v in got.items()}})
                print(f"round {r:2d}: {base} {rounds[-1]['base']:.2f} s, {head} {rounds[-1]['head']:.2f} s, x{rounds[-1]['ratio']:.2f}", flush=True)
            for s in sides.values():
                s.close()
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)
    med = {k: round(statistics.median(r[k] for r in rounds), 3) for k in ("base", "head", "ratio")}
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "base": base, "head": head + ("+uncommitted" if dirty else ""),
            "preset": a.preset, "photo": a.photo, "accelerator": "cpu", "rounds": a.rounds, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"median: {base} {med['base']:.2f} s, {head} {med['head']:.2f} s per photo; median ratio x{med['ratio']:.3f} "
          f"(rounds x{min(r['ratio'] for r in rounds):.2f}-x{max(r['ratio'] for r in rounds):.2f})")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"against_{base}_at_{head}_{a.preset}_{a.photo}"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "median": med, "photos_per_s": round(1 / med["head"], 3), "rounds": rounds}, indent=1) + "\n")
    lines = [f"# {a.preset}, one {a.photo} photo: {meta['head']} against {base}, strictly alternating ({meta['machine']}, {meta['date']})", "",
             f"`python benchmarks/bench_against.py {a.rev} --rounds {a.rounds} --preset {a.preset} --photo {a.photo}`: two processes, one per "
             "commit, one photo each in turn (order swapped every round); seconds per photo from the start of the predict loop to its end, "
             "as `bench_presets.py` times them.", "",
             f"**Median: {med['base']:.2f} s at {base}, {med['head']:.2f} s at {meta['head']}; median ratio x{med['ratio']:.3f}.**", "",
             f"| round | {base} (s) | {meta['head']} (s) | ratio |", "|---|---|---|---|"]
    lines += [f"| {i} | {r['base']:.2f} | {r['head']:.2f} | {r['ratio']:.3f} |" for i, r in enumerate(rounds)]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(out / f"{stem}.md")


if __name__ == "__main__":
    main()
