"""Seconds per photo for each ``tipim protect --preset`` on this machine: one face, in a 250x250
photo (an LFW-sized portrait) and in a 1920x1080 photo, and per photo over an album of 8 portraits
(the presets of ``--album-presets``: what an album costs at the default photos per batch). Timed from the start of the predict loop
(every model loaded) to its end: detection, alignment, attack, paste-back, writing, the round-trip
check, the independent self-check. The one-off start of a run (building it, loading the surrogate
and the self-check's models; Python imports not included) is reported separately. The baseline row is the same pipeline with one attack step
(detect, align, paste, write), so the attack's share is visible as a ratio.

    python benchmarks/bench_presets.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


ALBUM = 8


def photos(folder: Path) -> dict[str, Path]:
    import skimage.data

    face = Image.fromarray(skimage.data.astronaut())
    small = folder / "portrait_250x250.png"
    face.resize((250, 250), Image.BICUBIC).save(small)
    big = Image.new("RGB", (1920, 1080), (128, 128, 128))
    big.paste(face.resize((1080, 1080), Image.BICUBIC), (420, 0))
    large = folder / "photo_1920x1080.png"
    big.save(large)
    album = folder / "album"
    album.mkdir()
    for k in range(ALBUM):  # the same portrait under 8 names: 8 photos, each with its own random streams
        (album / f"portrait_{k}.png").write_bytes(small.read_bytes())
    return {"250x250": small, "1920x1080": large, f"album {ALBUM} x 250x250": album}


def time_preset(preset: str, photo: Path, out: Path, extra: list[str]) -> tuple[float, float, list[dict]]:
    from tipim.lightning.cli import _quiet, build_protect

    _quiet()
    from lightning.pytorch import Callback

    class Ready(Callback):  # runs after the writer's on_predict_start (self-check models loaded)
        def on_predict_start(self, trainer, pl_module):
            self.t = time.perf_counter()

    t0 = time.perf_counter()
    cli = build_protect([str(photo), "--out", str(out), "--preset", preset, "--trainer.accelerator", "cpu", *extra])
    ready, own = Ready(), cli.model.configure_callbacks
    cli.model.configure_callbacks = lambda: [*own(), ready]
    t1 = time.perf_counter()
    cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    t2 = time.perf_counter()
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    return (t1 - t0) + (ready.t - t1), (t2 - ready.t) / len(rows), rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--presets", nargs="+", default=["fast", "balanced", "strong"])
    ap.add_argument("--repeats", type=int, default=3, help="runs per cell; the table shows the median (one run varies by ~10%%)")
    ap.add_argument("--album-presets", nargs="*", default=["balanced"], help="presets also timed on an album (and the baseline)")
    a = ap.parse_args()
    import logging

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = photos(tmp)
        cases = [("1 step (baseline)", "fast", ["--model.steps", "1"])] + [(p, p, []) for p in a.presets]
        for label, preset, extra in cases:
            for size, photo in inputs.items():
                if size.startswith("album") and preset not in a.album_presets and extra == []:
                    continue
                runs = [time_preset(preset, photo, tmp / f"{label}-{size}-{k}".replace(" ", "_"), extra) for k in range(a.repeats)]
                start, seconds, written = sorted(runs, key=lambda r: r[1])[len(runs) // 2]  # the median run
                faces = [f for row in written for f in row["faces"]]
                rows.append({"preset": label, "photo": size, "accelerator": "cpu", "seconds": round(seconds, 2),
                             "photos_per_s": round(1 / seconds, 3), "start_seconds": round(start, 2),
                             "photos": len(written), "faces": len(faces), "linf": max(row.get("linf") or 0 for row in written),
                             "surrogate_success": sum(f["surrogate_success"] for f in faces)})
                print(f"{label:22s} {size:9s} {seconds:7.2f} s/photo  (start {start:.1f} s)  faces {rows[-1]['faces']}  "
                      f"fooled {rows[-1]['surrogate_success']}  linf {rows[-1]['linf']}", flush=True)
    base = {r["photo"]: r["seconds"] for r in rows if r["preset"].startswith("1 step")}
    for r in rows:
        r["x_baseline"] = round(r["seconds"] / base[r["photo"]], 1)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "photo_presets.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    lines = [f"# Seconds per photo by preset ({machine})", "",
             "One face per photo (scikit-image's astronaut); timed from the start of the predict loop, every model loaded, to its end: detection, alignment, attack, "
             "paste-back, writing the PNG, the round-trip check and the independent self-check (the face detected again and shown to the zoo models that did not make the mask). "
             "`start` = what a run does once, whatever the number of photos: building it and loading the surrogate and the self-check's models (Python imports, 5-8 s for the command line, not included). "
             "Baseline: the same pipeline with a single attack step, measured in the same run. "
             f"The album: {ALBUM} photos in one run at the default batch (photos per batch), the predict loop's time divided by {ALBUM}; "
             "the same portrait under 8 names, so each photo has its own random streams and the cost of a distinct photo. "
             f"Each cell: the median of {a.repeats} runs.", "",
             "| preset | photo | s/photo | x baseline | start (s) | fooled (surrogate, after paste-back) | max change |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['photo']} | {r['seconds']:.2f} | {r['x_baseline']} | {r['start_seconds']:.1f} | "
              f"{r['surrogate_success']}/{r['faces']} | {r['linf']} |" for r in rows]
    (out / "photo_presets.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
