#!/bin/bash
# The pooled photo benchmark of results/photo_transfer (both field sets, 280 photos, the default
# preset, 4 held-out recognisers, as written and after JPEG 75) at this checkout, for a change
# that alters float rounding: compare runs/<LABEL>/pooled/results.md with the last committed one.
#   bash scripts/pooled_photo_benchmark.sh LABEL      (~25-35 min on 2 CPU cores; needs ../shared/data/lfw)
set -euo pipefail
L=${1:?usage: $0 LABEL}
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -d runs/field ] || $PY benchmarks/photo_transfer.py prepare --lfw ../shared/data/lfw --out runs/field --probes 40 --distractors 400
[ -d runs/field80 ] || $PY benchmarks/photo_transfer.py prepare --lfw ../shared/data/lfw --out runs/field80 --probes 80 --distractors 400 --sizes 40 55 --seed 1
for px in 40 55 110; do $PY -m tipim.cli protect runs/field/photos-$px --out runs/field/runs/$L@$px --check none; done
for px in 40 55; do $PY -m tipim.cli protect runs/field80/photos-$px --out runs/field80/runs/$L@$px --check none; done
S="$PY benchmarks/photo_transfer.py score --models sface facenet dlib-resnet edgeface-s --surrogates $L=arcface-mbf"
$S --field runs/field --runs runs/field/runs/$L@{40,55,110} --out runs/$L/field
$S --field runs/field80 --runs runs/field80/runs/$L@{40,55} --out runs/$L/field80
$PY benchmarks/photo_transfer.py pool runs/$L/field runs/$L/field80 --out runs/$L/pooled
echo "runs/$L/pooled/results.md"
