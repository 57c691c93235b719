"""The surrogate's forward and backward as the zoo loads it (``tipim.models.prelu``: PReLUs and
convolutions called as functions, the PReLU's one-kernel backward) against onnx2torch's own graph
(``nn.Module`` calls, torch's PReLU backward), interleaved in one process on this machine:
arcface-mbf, the balanced preset's surrogate, at batch 1 (a lone photo's step) and batch 8 (an
album's MMD group), and one batch-1 forward with 10 backwards through it (the greedy step's K
candidate gradients), channels-last as the attack runs it. Also checks that the input gradients
are equal.

    python benchmarks/bench_prelu.py [--rounds 8] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tipim.models import ZooEmbedder
from tipim.models.zoo import _onnx_to_torch
from tipim.zoo.registry import artifact_path


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


def converters(model: ZooEmbedder) -> ZooEmbedder:
    """``model`` with onnx2torch's graph, as converted (the same weights and preprocessing)."""
    plain = copy.deepcopy(model)
    plain.net = _onnx_to_torch(artifact_path("arcface-mbf"), direct=False).eval().requires_grad_(False)
    return plain.to(memory_format=torch.channels_last)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds; each times 20 steps per variant")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    model = ZooEmbedder("arcface-mbf").to(memory_format=torch.channels_last)
    models = {"torch": converters(model), "fast": model}
    g = torch.Generator().manual_seed(0)
    rows = []
    for batch, backwards in ((1, 1), (8, 1), (1, 10)):
        x = torch.rand(batch, 3, 112, 112, generator=g)
        v = torch.randn(backwards, batch, model.dim, generator=g)
        grads = {}
        for name, net in models.items():
            grads[name] = gradients(net, x, v)
        times = {"torch": [], "fast": []}
        for _ in range(a.rounds):
            for name, net in models.items():
                step_ms(net, x, v, 3)  # warm
                times[name].append(step_ms(net, x, v, max(3, 20 // backwards)))
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
    lines = [f"# arcface-mbf forward + input-gradient backward: the zoo's graph against onnx2torch's ({meta['machine']}, "
             f"{meta['cores']} cores, {meta['threads']} threads, torch {meta['torch']}, {meta['date']})", "",
             "`benchmarks/bench_prelu.py`: both in one process, interleaved over "
             f"{a.rounds} rounds of 20 steps each (3 with 10 backwards); each cell the median of the rounds' medians. Channels-last, fp32.", "",
             "| batch | backwards per forward | onnx2torch's graph (ms) | the zoo's (ms) | speed-up | same input gradients (bits) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['backwards']} | {r['torch_ms']} | {r['fast_ms']} | {r['speedup']}x | {'yes' if r['same_gradient'] else 'NO'} |"
              for r in rows]
    (out / "prelu_backward.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
