"""Cost by photo and face size: seconds per photo and peak memory of ``tipim protect`` (defaults,
self-check on), as ratios to the same photos at their native size, in the same run.

    python benchmarks/bench_face_size.py --lfw ../shared/data/lfw --photos 3 --out benchmarks/results

The photos are the central 160 x 160 of LFW photos (faces ~90-100 px wide there), written as
JPEG 95 at their native size and upscaled (bicubic) by each factor: x40 is a 41-MP close-up with
a face of ~3,800 px, x50 a 64-MP photo. Each size is one ``tipim protect`` process; its peak
resident memory is read from the process itself, seconds per photo from the manifest (decode
and detection, the photo's share of the attack, and writing with the self-check).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHIM = """import atexit, json, resource, sys
stats = sys.argv[1]
atexit.register(lambda: open(stats, "w").write(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6})))
sys.argv = ["tipim", *sys.argv[2:]]
from tipim.cli import main
main()
"""


def photos(lfw: Path, n: int, seed: int) -> list[Path]:
    people = sorted(p for p in lfw.iterdir() if p.is_dir())
    return [sorted(p.glob("*.jpg"))[0] for p in random.Random(seed).sample(people, n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", default="../shared/data/lfw")
    ap.add_argument("--photos", type=int, default=3)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4, 8, 16, 40, 50])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/bench_face_size")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    from PIL import Image

    work = Path(a.work)
    sources = photos(Path(a.lfw), a.photos, a.seed)
    rows = []
    for k in a.scales:
        folder = work / f"x{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for src in sources:
            dst = folder / f"{src.stem}.jpg"
            if not dst.is_file():
                crop = Image.open(src).convert("RGB").crop((45, 45, 205, 205))
                (crop if k == 1 else crop.resize((160 * k, 160 * k), Image.BICUBIC)).save(dst, quality=95)
        run = work / "runs" / f"x{k}"
        subprocess.run(["rm", "-rf", str(run)], check=True)
        stats = work / f"x{k}.json"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", SHIM, str(stats), "protect", str(folder), "--out", str(run)], check=False)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines() if line.strip()]
        ok = [r for r in records if r.get("status") == "ok"]
        per_photo = [sum(r["seconds"].values()) for r in ok]
        faces = [f for r in ok for f in r["faces"]]
        rows.append({
            "scale": k, "photo_px": 160 * k, "megapixels": round((160 * k) ** 2 / 1e6, 2), "photos": len(records), "ok": len(ok),
            "face_px": round(statistics.median(f["box"][2] - f["box"][0] for f in faces)) if faces else None,
            "s_per_photo": round(statistics.median(per_photo), 2) if per_photo else None,
            "parts_s": {p: round(statistics.median(r["seconds"][p] for r in ok), 2) for p in ("load", "attack", "write")} if ok else {},
            "process_s": round(wall, 1), **json.loads(stats.read_text()),
            "surrogate_success": sum(f["surrogate_success"] for f in faces), "faces": len(faces),
            "recognised_by_none": sum(not f.get("independent", {}).get("recognised_by", [1]) for f in faces),
        })
        print(rows[-1], flush=True)
    base = rows[0]
    for r in rows:
        r["time_ratio"] = round(r["s_per_photo"] / base["s_per_photo"], 2) if r["s_per_photo"] and base["s_per_photo"] else None
        r["memory_ratio"] = round(r["peak_rss_gb"] / base["peak_rss_gb"], 2)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores", "photos": [str(s) for s in sources], "rows": rows}
    (out / "face_size.json").write_text(json.dumps(meta, indent=1) + "\n")
    lines = [f"# Cost by photo and face size ({meta['machine']}; {a.photos} LFW photos, defaults, self-check on)", "",
             "Ratios are to the same photos at their native 160 x 160, in the same run. Seconds per photo: median of the photos "
             "(decode and detect + attack + write and self-check); peak memory: the whole `tipim protect` process.", "",
             "| photo | MP | face px | s / photo | x native | load / attack / write s | peak GB | x native | surrogate fooled | no zoo model matches |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["parts_s"]
        lines.append(f"| {r['photo_px']} x {r['photo_px']} | {r['megapixels']} | {r['face_px']} | {r['s_per_photo']} | {r['time_ratio']} | "
                     f"{p.get('load')} / {p.get('attack')} / {p.get('write')} | {r['peak_rss_gb']:.2f} | {r['memory_ratio']} | "
                     f"{r['surrogate_success']}/{r['faces']} | {r['recognised_by_none']}/{r['faces']} |")
    (out / "face_size.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
