"""Engine throughput on an accelerator: fp32 against bf16 autocast, by batch size, for exact
greedy insertion (the paper: all K targets tried every step) and the shortlist of the nearest
target (``GreedyInsertion(shortlist=1)``, which wrote the same images as exact greedy on the CPU
without input diversity, results/greedy_shortlist), optionally with ``torch.compile``.

Measured on real LFW crops of the protocol's probes with arcface-mbf as surrogate, K=10 targets.
The baseline is the same engine in fp32 at batch 8 on the same machine's CPU, in the same run,
so every figure is a ratio against something measured beside it. Success (nearest among
{itself, targets} is a target, re-embedded in fp32) and the 8-bit eps bound are checked for each
setting, so a faster precision that protects worse shows up here.

    python benchmarks/bench_device.py --protocol results/reproduce/protocol.json --root data/lfw-aligned
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from method import method_attack

from tipim.attack import judge, surrogate_success
from tipim.attack.steps import quantise_within
from tipim.lightning.data import load_face, load_targets, scan_faces
from tipim.models import ZooEmbedder


def run(model, faces, targets, steps, device, dtype, batch, shortlist=0, surrogate=None, grad_mode="loop"):
    """Protect ``faces`` in batches; return seconds (synchronised), success count, max 8-bit change
    and the share of greedy choices (after the first step) that were the face's nearest target.
    ``surrogate``: what the attack runs (e.g. a compiled ``model``); success is judged on ``model``."""
    model = model.to(device)
    attack = method_attack(model if surrogate is None else surrogate, "tipim", "--model.steps", str(steps), "--model.grad_mode", grad_mode,
                           "--model.selector.init_args.shortlist", str(shortlist), channels_last=surrogate is None)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
    with torch.no_grad():
        t_emb = attack.embed_targets(targets.to(device))
    outs, ranks, sync = [], [], (torch.cuda.synchronize if device.type == "cuda" else (lambda: None))
    sync()
    start = time.perf_counter()
    for i in range(0, len(faces), batch):
        x_r = faces[i : i + batch].to(device)
        with ctx:
            res = attack(x_r, t_emb)
        outs.append(quantise_within(res.x_p.float(), x_r, 12 / 255).float() / 255)
        ranks.append(res.choice_rank[1:].flatten())
    sync()
    seconds = time.perf_counter() - start
    x_p, x_r = torch.cat(outs), faces.to(device)
    with torch.no_grad():  # judge every setting in fp32
        d_r, d_t, _ = judge(model(x_p), model(x_r), t_emb)
    linf = int(((x_p - x_r).abs() * 255).round().max())
    nearest = float((torch.cat(ranks) == 0).float().mean()) if ranks and torch.cat(ranks).numel() else float("nan")
    return seconds, int(surrogate_success(d_t, d_r).sum()), linf, nearest


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocol", default="results/reproduce/protocol.json")
    ap.add_argument("--root", default=None)
    ap.add_argument("--faces", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="cost per step is flat; success is judged at these steps")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--cpu-faces", type=int, default=8)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shortlists", type=int, nargs="+", default=[0, 1], help="0 = exact greedy")
    ap.add_argument("--compile", action="store_true", help="also torch.compile the surrogate (fp32 and bf16, largest batch, each shortlist)")
    ap.add_argument("--batched-grads", action="store_true", help="also exact greedy with grad_mode='batched' (one vmapped backward for the K targets), largest batch")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device(a.device)
    items = [it for it in scan_faces(a.protocol, a.root) if Path(it.path).is_file()][: a.faces]  # a subset may be present
    faces = torch.stack([load_face(it.path) for it in items])
    _, targets = load_targets(a.protocol, a.root)
    model = ZooEmbedder("arcface-mbf")
    rows = []
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    tag = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def write():  # after every row, so a run cut short still leaves its table
        base = rows[0]["img_per_s"]
        for r in rows:
            r["vs_cpu_fp32_b8"] = r["img_per_s"] / base
        result = {"accelerator": name, "cpu_cores": os.cpu_count(), "torch": torch.__version__, "surrogate": "arcface-mbf",
                  "targets": len(targets), "steps": a.steps, "method": "tipim (greedy insertion, MMD gamma 1, random affine)", "rows": rows}
        (out / f"engine_{tag}.json").write_text(json.dumps(result, indent=1))
        lines = [f"# Engine on {name} (torch {torch.__version__}, {os.cpu_count()} CPU cores)", "",
                 f"TIP-IM, arcface-mbf, K={len(targets)}, T={a.steps}, real LFW probes. Baseline: the same engine, fp32, batch 8, "
                 "on this machine's CPU in the same run. `img/s at T=50`: the rate at the paper's 50 steps (a step's cost is flat). "
                 "Success: nearest of {itself, targets} is a target (fp32 re-embedding). `nearest`: share of greedy choices after "
                 "the first step that were the face's nearest target (measured on exact greedy; a shortlist of 1 scores no candidates after the first step, so its cell is nan).", "",
                 "| where | greedy | dtype | batch | faces | img/s | img/s at T=50 | x CPU fp32 | success | max change (8-bit) | nearest |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['device']} | {r['greedy']} | {r['dtype']} | {r['batch']} | {r['faces']} | {r['img_per_s']:.2f} | {r['img_per_s_t50']:.2f} | "
                  f"{r['vs_cpu_fp32_b8']:.1f} | {r['success']}/{r['faces']} | {r['linf_8bit']} | {r['nearest']:.3f} |" for r in rows]
        (out / f"engine_{tag}.md").write_text("\n".join(lines) + "\n")

    def record(where, dtype, batch, n, res, greedy="exact"):
        seconds, ok, linf, nearest = res
        rows.append({"device": where, "greedy": greedy, "dtype": dtype, "batch": batch, "faces": n, "seconds": round(seconds, 3),
                     "img_per_s": n / seconds, "img_per_s_t50": n * a.steps / 50 / seconds, "success": ok, "linf_8bit": linf, "nearest": nearest})
        print(f"{where:>5s} {greedy:16s} {dtype:5s} batch {batch:4d}: {n / seconds:8.2f} img/s ({n * a.steps / 50 / seconds:7.2f} at T=50)  "
              f"success {ok}/{n}  linf {linf}  nearest {nearest:.3f}", flush=True)
        write()

    def label(m: int) -> str:
        return "exact" if m == 0 else f"shortlist{m}"

    cpu = torch.device("cpu")
    record("cpu", "fp32", 8, a.cpu_faces, run(model, faces[: a.cpu_faces], targets, a.steps, cpu, "fp32", 8))
    run(model, faces[:8], targets, 2, device, "fp32", 8)  # warm-up: kernels, allocator
    for m in a.shortlists:
        for dtype in ("fp32", "bf16"):
            for b in a.batches:
                record(device.type, dtype, b, len(faces), run(model, faces, targets, a.steps, device, dtype, b, m), label(m))
    b = max(a.batches)
    if a.batched_grads:
        for dtype in ("fp32", "bf16"):
            record(device.type, dtype, b, len(faces), run(model, faces, targets, a.steps, device, dtype, b, 0, grad_mode="batched"), "exact+batched")
    if a.compile:
        import torch._functorch.config as functorch_config

        functorch_config.donated_buffer = False  # the engine takes several gradients through one graph (retain_graph)
        compiled = torch.compile(model.to(device))
        for m in a.shortlists:
            for dtype in ("fp32", "bf16"):
                run(model, faces[:b], targets, 2, device, dtype, b, m, compiled)  # compile for these shapes first
                record(device.type, dtype, b, len(faces), run(model, faces, targets, a.steps, device, dtype, b, m, compiled), f"{label(m)}+compile")


if __name__ == "__main__":
    main()
