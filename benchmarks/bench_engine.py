"""Engine throughput against a reference loop written from the official TIP-IM algorithm.

Reference: one image at a time; per step, for each of the K targets a separate forward and
backward pass, a candidate step, and a forward pass to score it (the official code's structure).
Engine: a batch at a time; one forward per step, K vector-Jacobian products through it, all B*K
candidates scored in one forward. Same surrogate (arcface-mbf), same faces, T=50, K=10, this CPU.

Then ablations at fewer steps (cost per step is flat): what each saving buys, and the cost of
running greedy selection only every s-th step.

    python benchmarks/bench_engine.py [--faces N] [--steps T] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tipim.attack import GreedyInsertion, IdentityMaskAttack, MomentumStep, Objective, gain, identity_distance, relative_identity_loss
from tipim.models import ZooEmbedder


def reference_attack(model, x_r, t_emb, steps, eps=12 / 255, alpha=1.5 / 255, mu=1.0):
    """The official algorithm's loop structure, image by image, target by target."""
    out = []
    for b in range(len(x_r)):
        xr = x_r[b : b + 1]
        with torch.no_grad():
            n_r = F.normalize(model(xr), dim=1)
        x, g = xr.clone(), torch.zeros_like(xr)
        for _ in range(steps):
            best = None
            for k in range(len(t_emb)):
                xk = x.clone().requires_grad_(True)
                loss = relative_identity_loss(F.normalize(model(xk), dim=1), t_emb[k : k + 1], n_r).sum()
                loss.backward()
                gk = mu * g + xk.grad / xk.grad.abs().sum()
                cand = torch.min(torch.max(x - alpha * gk.sign(), xr - eps), xr + eps).clamp(0, 1)
                with torch.no_grad():
                    e = F.normalize(model(cand), dim=1)
                    value = float(gain(identity_distance(e, n_r), identity_distance(e[:, None], t_emb[None]), "max"))
                if best is None or value > best[0]:
                    best = (value, cand, gk)
            _, x, g = best
        out.append(x)
    return torch.cat(out)


class SeparateForwards(IdentityMaskAttack):
    """Ablation: the engine with one forward+backward per target instead of one shared forward."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective.identity_grads = self._per_target_grads  # the objective's all-target gradients, replaced

    def _per_target_grads(self, x, n, n_r, t_emb, which, parts=None):
        if which is not None:
            return Objective.identity_grads(self.objective, x, n, n_r, t_emb, which, parts)
        grads = []
        for k in range(len(t_emb)):
            xk = x.detach().requires_grad_(True)
            xin = self.transform(xk) if self.transform is not None else xk
            loss = relative_identity_loss(self.embed(xin), t_emb[k].expand(len(x), -1), n_r, self.metric).mean()
            grads.append(torch.autograd.grad(loss, xk)[0])
        return torch.stack(grads, 1)


def timed(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def load_faces(n: int):
    from tipim.lightning.data import load_targets

    root = Path("data/demo")
    if not (root / "targets").is_dir():
        from tipim.demo import prepare_demo

        prepare_demo(root)
    _, team = load_targets(root / "targets")
    _, faces = load_targets(root / "faces")
    x = torch.cat([faces, team])[:n]
    return x, team


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--faces", type=int, default=8)
    ap.add_argument("--reference-faces", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--ablation-steps", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = ZooEmbedder("arcface-mbf").to(dev)
    x, targets = load_faces(a.faces)
    x, targets = x.to(dev), targets.to(dev)
    K = len(targets)

    def engine(cls=IdentityMaskAttack, steps=a.steps, every=1, grad_mode="loop", faces=x, channels_last=True):
        model.to(memory_format=torch.contiguous_format)
        att = cls(model, MomentumStep(steps=steps), GreedyInsertion(every=every), grad_mode=grad_mode, channels_last=channels_last)
        t_emb = att.embed_targets(targets)
        return att(faces, t_emb)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    results = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "surrogate": "arcface-mbf",
        "targets": K,
        "steps": a.steps,
    }
    # main comparison at T = steps
    xr = x[: a.reference_faces]
    with torch.no_grad():
        t_emb = F.normalize(model(targets), dim=1)
    model.to(memory_format=torch.contiguous_format)
    t_ref, _ = timed(lambda: (reference_attack(model, xr, t_emb, a.steps), sync()))
    t_eng, _ = timed(lambda: (engine(), sync()))
    ref_ips, eng_ips = a.reference_faces / t_ref, len(x) / t_eng
    results["reference"] = {"faces": a.reference_faces, "seconds": round(t_ref, 2), "images_per_s": ref_ips}
    results["engine"] = {"faces": len(x), "batch": len(x), "seconds": round(t_eng, 2), "images_per_s": eng_ips}
    results["speedup"] = eng_ips / ref_ips
    print(f"reference loop: {ref_ips:.4f} img/s   engine: {eng_ips:.4f} img/s   ratio {eng_ips / ref_ips:.2f}x", flush=True)

    # ablations, seconds per image per step at fewer steps
    T = a.ablation_steps
    abl = {}

    def per_step(label, fn, faces):
        sec, _ = timed(lambda: (fn(), sync()))
        abl[label] = sec / (faces * T)
        print(f"  {label:55s} {abl[label]:.4f} s/img/step", flush=True)

    DEFAULT = "batched images, shared forward, K backward, channels_last (default)"

    def reference_contiguous():
        model.to(memory_format=torch.contiguous_format)
        return reference_attack(model, xr[:1], t_emb, T)

    per_step("reference loop (1 image, per-target fwd+bwd)", reference_contiguous, 1)
    per_step("batched images, per-target fwd+bwd", lambda: engine(SeparateForwards, T, channels_last=False), len(x))
    per_step("batched images, shared forward, K backward", lambda: engine(steps=T, channels_last=False), len(x))
    per_step("batched images, shared forward, one batched VJP", lambda: engine(steps=T, grad_mode="batched", channels_last=False), len(x))
    per_step(DEFAULT, lambda: engine(steps=T), len(x))
    per_step("batched images, shared forward, K backward (again, order check)", lambda: engine(steps=T, channels_last=False), len(x))
    for s in (2, 5, 10):
        per_step(f"default, greedy selection every {s} steps", lambda s=s: engine(steps=T, every=s), len(x))
    mi = IdentityMaskAttack(model, MomentumStep(steps=T), GreedyInsertion(every=10**9), channels_last=True)
    per_step("plain momentum step (no selection after step 0)", lambda: mi(x, mi.embed_targets(targets)), len(x))
    results["ablation_steps"] = T
    results["seconds_per_image_step"] = abl
    base = abl[DEFAULT]
    results["relative_to_default"] = {k: v / base for k, v in abl.items()}

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if dev.type == "cuda" else "cpu"
    (out / f"engine_{tag}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# Engine benchmark ({tag})",
        "",
        f"Device: {results['device']}; torch {results['torch']}; surrogate arcface-mbf; K={K} targets.",
        "",
        f"Command: `python benchmarks/bench_engine.py --faces {a.faces} --steps {a.steps}`",
        "",
        f"## TIP-IM, T={a.steps}, greedy insertion every step",
        "",
        "| implementation | faces | seconds | images/s |",
        "|---|---|---|---|",
        f"| reference loop (official structure) | {a.reference_faces} | {t_ref:.1f} | {ref_ips:.4f} |",
        f"| engine (batch {len(x)}) | {len(x)} | {t_eng:.1f} | {eng_ips:.4f} |",
        "",
        f"**Engine / reference: {eng_ips / ref_ips:.2f}x** (same machine, same run).",
        "",
        f"## Ablations (T={T}; seconds per image per step, and relative to the default engine)",
        "",
        "| variant | s/img/step | relative |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} | {v / base:.2f} |" for k, v in abl.items()]
    (out / f"engine_{tag}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / f'engine_{tag}.md'}")


if __name__ == "__main__":
    main()
