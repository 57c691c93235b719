"""The surrogate's forward and backward with ``tipim.models.prelu``'s PReLU against torch's own
(``FastPReLU.fast = False``), interleaved in one process on this machine: arcface-mbf, the
balanced preset's surrogate, at batch 1 (a lone photo's step) and batch 8 (an album's MMD group),
and one batch-1 forward with 10 backwards through it (the greedy step's K candidate gradients),
channels-last as the attack runs it. Also checks that the input gradients are equal.

    python benchmarks/bench_prelu.py [--rounds 8] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tipim.models import ZooEmbedder
from tipim.models.prelu import FastPReLU


def gradients(model, x, v) -> list[torch.Tensor]:
    """One forward, then an input-gradient backward per cotangent in ``v`` (K, B, D)."""
    xx = x.clone().requires_grad_(True)
    e = F.normalize(model(xx.contiguous(memory_format=torch.channels_last)), dim=-1)
    return [torch.autograd.grad(e, xx, vk, retain_graph=k < len(v) - 1)[0] for k, vk in enumerate(v)]


def step_ms(model, x, v, repeats: int) -> float:
    """Median ms of one forward and its backwards."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        gradients(model, x, v)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def use_torchs(model, on: bool) -> None:
    for mod in model.modules():
        if isinstance(mod, FastPReLU):
            mod.fast = not on


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds; each times 20 steps per variant")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    model = ZooEmbedder("arcface-mbf").to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    rows = []
    for batch, backwards in ((1, 1), (8, 1), (1, 10)):
        x = torch.rand(batch, 3, 112, 112, generator=g)
        v = torch.randn(backwards, batch, model.dim, generator=g)
        grads = {}
        for name, torchs in (("torch", True), ("fast", False)):
            use_torchs(model, torchs)
            grads[name] = gradients(model, x, v)
        times = {"torch": [], "fast": []}
        for _ in range(a.rounds):
            for name, torchs in (("torch", True), ("fast", False)):
                use_torchs(model, torchs)
                step_ms(model, x, v, 3)  # warm
                times[name].append(step_ms(model, x, v, max(3, 20 // backwards)))
        use_torchs(model, False)
        row = {"batch": batch, "backwards": backwards, "torch_ms": round(statistics.median(times["torch"]), 2),
               "fast_ms": round(statistics.median(times["fast"]), 2),
               "same_gradient": all(torch.equal(a, b) for a, b in zip(grads["torch"], grads["fast"]))}
        row["speedup"] = round(row["torch_ms"] / row["fast_ms"], 3)
        rows.append(row)
        print(row, flush=True)
    meta = {"machine": platform.machine(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "rounds": a.rounds, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prelu_backward.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"# arcface-mbf forward + input-gradient backward: tipim's PReLU against torch's ({meta['machine']}, "
             f"{meta['cores']} cores, {meta['threads']} threads, torch {meta['torch']}, {meta['date']})", "",
             "`benchmarks/bench_prelu.py`: both in one process, interleaved over "
             f"{a.rounds} rounds of 20 steps each (3 with 10 backwards); each cell the median of the rounds' medians. Channels-last, fp32.", "",
             "| batch | backwards per forward | torch's PReLU (ms) | tipim.models.prelu (ms) | speed-up | same input gradients (bits) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['backwards']} | {r['torch_ms']} | {r['fast_ms']} | {r['speedup']}x | {'yes' if r['same_gradient'] else 'NO'} |"
              for r in rows]
    (out / "prelu_backward.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
