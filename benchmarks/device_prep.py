"""Prepare what `benchmarks/device_check.sh` carries to a lent accelerator (one call takes at most
64 MiB): the protocol's probe crops and target crops (.gpu/lfw-aligned), the probes' original LFW
photos (.gpu/photos), the models that fit (.gpu/cache: arcface-mbf, edgeface-s, MTCNN, the
packaged targets) and wheels of the packages the device image lacks (.whl). Both folders are
ignored by git (.git/info/exclude).

    python benchmarks/device_prep.py [--lfw ../shared/data/lfw]
then, through the device tool: `bash benchmarks/device_check.sh` with carry [".gpu", ".whl"].
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tipim.zoo.registry import cache_dir

MODELS = ["arcface-mbf", "edgeface-s", "mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet", "demo-players", "demo-gdp"]
WHEELS = ["kornia==0.9.0", "kornia_rs==0.2.0", "onnx2torch==1.5.15", "jsonargparse==4.53.0", "docstring_parser==0.18.0", "typeshed_client==2.15.0"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocol", default="results/reproduce/protocol.json")
    ap.add_argument("--aligned", default="data/lfw-aligned")
    ap.add_argument("--lfw", default="../shared/data/lfw")
    a = ap.parse_args()
    p = json.loads(Path(a.protocol).read_text())
    crops, photos, models = Path(".gpu/lfw-aligned"), Path(".gpu/photos"), Path(".gpu/cache/models")
    for d in (crops, photos, models):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for it in p["probes"] + p["targets"]:
        (crops / it["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(a.aligned) / it["path"], crops / it["path"])
    for it in p["probes"]:
        stem = Path(it["path"]).stem
        shutil.copy(Path(a.lfw) / it["identity"] / f"{stem}.jpg", photos / f"{stem}.jpg")
    for m in MODELS:
        shutil.copytree(cache_dir() / "models" / m, models / m)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "--implementation", "cp", *[f"--platform={x}" for x in PLATFORMS], "-d", ".whl", *WHEELS], check=True)
    exclude = Path(".git/info/exclude")
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    exclude.write_text("\n".join(lines + [x for x in ("/.gpu/", "/.whl/") if x not in lines]) + "\n")
    print(f"{len(p['probes'])} probes, {len(p['targets'])} targets, {len(MODELS)} models")


if __name__ == "__main__":
    main()
