"""Seconds to find the faces of a 12 MP photo (4000x3000: one with a face ~260 px wide, one of
smooth noise with no face) by detection size, as ratios against full-resolution detection measured in the same run.

    python benchmarks/bench_detect.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def photos() -> dict[str, np.ndarray]:
    import skimage.data

    face = Image.fromarray(skimage.data.astronaut()).resize((1500, 1500), Image.BICUBIC)
    big = Image.new("RGB", (4000, 3000), (120, 130, 140))
    big.paste(face, (1250, 750))
    noise = np.random.default_rng(0).integers(0, 256, (3000 // 8, 4000 // 8, 3), dtype=np.uint8)
    empty = np.asarray(Image.fromarray(noise).resize((4000, 3000), Image.BILINEAR))
    return {"12 MP, one face": np.asarray(big), "12 MP, no face": empty}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--sizes", type=int, nargs="+", default=[0, 1600, 1024])
    a = ap.parse_args()
    torch.set_num_threads(2)
    from tipim.align.aligner import FaceAligner

    rows = []
    for name, img in photos().items():
        base = None
        for size in a.sizes:
            aligner = FaceAligner(multi="all", detect_size=size)
            aligner.detect(img[:500, :500])  # warm-up
            t = time.perf_counter()
            boxes, _ = aligner.detect(img)
            s = time.perf_counter() - t
            base = base or s
            widths = [round(float(b[2] - b[0])) for b in boxes]
            rows.append({"photo": name, "detect_size": size or "full", "seconds": round(s, 2), "x_full": round(s / base, 3), "face_widths": widths})
            print(rows[-1], flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detect.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [f"# Face detection on 12 MP photos ({platform.machine()}, torch {torch.__version__}, 2 threads)", "",
             "`python benchmarks/bench_detect.py`. `x full` = seconds / full-resolution seconds in the same run. "
             "Detection only (decoding not included). The noise photo has no face: what full resolution finds there are false detections.", "",
             "| photo | detect size | s | x full | faces found (width px) |", "|---|---|---|---|---|"]
    lines += [f"| {r['photo']} | {r['detect_size']} | {r['seconds']:.2f} | {r['x_full']:.3f} | {r['face_widths']} |" for r in rows]
    (out / "detect.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
