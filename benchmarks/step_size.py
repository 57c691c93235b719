"""Which step-size rule should be the default? Both rules, same faces, same targets, TIP-IM at
T=50 on arcface-mbf; success measured on the surrogate and on the three other zoo models
(a face counts as protected on a model when its nearest identity among {itself, the K targets}
is a target). Writes benchmarks/results/step_size.{json,md}.

    python benchmarks/step_size.py --aligned data/lfw-aligned --faces 16
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from method import method_attack

from tipim.attack import judge, quantise_within, surrogate_success
from tipim.lightning.data import load_face
from tipim.models import ZooEmbedder


def pick(aligned: Path, n_faces: int, n_targets: int, seed: int):
    people = sorted(p for p in aligned.iterdir() if p.is_dir())
    rng = random.Random(seed)
    rng.shuffle(people)
    chosen = [sorted(p.glob("*.png"))[0] for p in people[: n_faces + n_targets]]
    faces = torch.stack([load_face(p) for p in chosen[:n_faces]])
    targets = torch.stack([load_face(p) for p in chosen[n_faces:]])
    return faces, targets


@torch.no_grad()
def protected_rate(model, x_p, x_r, targets) -> float:
    d_r, d_t, _ = judge(model(x_p), model(x_r), model(targets))
    return float(surrogate_success(d_t, d_r).float().mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--aligned", default="data/lfw-aligned")
    ap.add_argument("--faces", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    faces, targets = pick(Path(a.aligned), a.faces, 10, seed=0)
    surrogate = ZooEmbedder("arcface-mbf")
    others = {n: ZooEmbedder(n) for n in ("sface", "facenet", "dlib-resnet")}
    rows = {}
    for rule in ("paper", "official"):
        torch.manual_seed(0)
        att = method_attack(surrogate, "tipim", "--model.steps", str(a.steps), "--model.step_size", rule)
        r = att(faces, att.embed_targets(targets))
        x_p = quantise_within(r.x_p, faces, 12 / 255).float() / 255
        row = {"alpha_255": round(att.step.alpha * 255, 4), "arcface-mbf (white box)": protected_rate(surrogate, x_p, faces, targets)}
        row |= {f"{n} (black box)": protected_rate(m, x_p, faces, targets) for n, m in others.items()}
        row["mean_abs_change_255"] = float((x_p - faces).abs().mean() * 255)
        rows[rule] = row
        print(rule, row, flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_size.json").write_text(json.dumps({"faces": a.faces, "targets": 10, "steps": a.steps, "rows": rows}, indent=2) + "\n")
    cols = list(rows["paper"])
    lines = [
        "# Step-size rule: paper (1.5/255) vs official code (1.5 * eps / T)",
        "",
        f"TIP-IM, arcface-mbf surrogate, eps 12/255, T={a.steps}, gamma 1, {a.faces} LFW faces (seed 0), 10 targets.",
        "Share of faces whose nearest identity among {itself, 10 targets} is a target, per model.",
        "",
        f"Command: `python benchmarks/step_size.py --faces {a.faces} --steps {a.steps}`",
        "",
        "| rule | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    lines += [f"| {k} | " + " | ".join(f"{v[c]:.3f}" for c in cols) + " |" for k, v in rows.items()]
    (out / "step_size.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
