#!/usr/bin/env bash
# One lent-accelerator session for issue 12's goals (run through the device tool; the project never
# needs it). Stages, most important first, each under a share of one deadline so that a slow stage
# cannot eat the others; every stage writes as it goes, so a cut run still returns its figures:
#  1. engine throughput by batch and dtype, exact greedy and a shortlist of 1, vmapped gradients
#     (bench_device.py; CPU baseline in the same run);
#  2. photos/s: the protocol's 500 probe photos (LFW 250x250, one face) with the balanced preset,
#     with the independent self-check (the models that travel: edgeface-s), without it (profiled),
#     and without it with the surrogate compiled (--model.compile true, issue 25);
#  3. the full 500-probe protocol through the reproduction driver, `tipim reproduce` (REPRODUCE=table3 by
#     default; any of its stages, e.g. REPRODUCE="ensemble photos"; protect only, evaluated afterwards on
#     the CPU machine, where every zoo model is);
#  4. torch.compile of the surrogate against eager, same run.
# Prepared here by `python benchmarks/device_prep.py` (.gpu: probe crops and photos, the models
# that fit in one call; .whl: the packages the device image lacks).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/small"
S=$OUT/small
PY=${PY:-python3}; ACCEL=${ACCEL:-gpu}; DEV=${DEV:-cuda}            # PY=.venv/bin/python ACCEL=cpu DEV=cpu: a dry run here
FACES=${FACES:-512}; STEPS=${STEPS:-20}; PHOTOS=${PHOTOS:-256}; PROBES=${PROBES:-}   # PROBES empty: all 500
[ "$PY" = python3 ] && { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1; }
export PYTHONPATH=$PWD/src:/tmp/site TIPIM_CACHE=$PWD/.gpu/cache PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec %s -c "import sys; from tipim.cli import main; sys.exit(main())" "$@"\n' "$PY" > /tmp/bin/tipim && chmod +x /tmp/bin/tipim
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$S/machine.txt"
$PY -c "import torch, lightning, kornia; print('torch', torch.__version__, 'lightning', lightning.__version__, 'kornia', kornia.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')" | tee -a "$S/machine.txt"
DEADLINE=${DEADLINE:-540}; STAGES=${STAGES:-engine photos protocol compile}   # TABLE3=tipim: one method of the protocol stage
on() { [[ " $STAGES " == *" $1 "* ]]; }
left() { local l=$((DEADLINE - SECONDS)); [ "$l" -lt 1 ] && l=1; [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }   # min(cap, time left), >= 1
# Lightning's predict loop only logs SIGTERM, so every limit is followed by SIGKILL (-k): a cut
# protect process must not keep its GPU memory into the next stage
stage() { echo "== $1 took $((SECONDS - $2)) s (rc $3)" | tee -a "$S/stages.txt"; }

s=$SECONDS
on engine && timeout -k 10 "$(left 150)" $PY benchmarks/bench_device.py --device "$DEV" --root .gpu/lfw-aligned --faces "$FACES" --steps "$STEPS" \
  --batches 128 512 --shortlists 0 1 --batched-grads --cpu-faces 4 --out "$S/engine" > "$S/engine.log" 2>&1
rc=$?; on engine && stage engine $s $rc

photos() {  # name, extra flags
  local name=$1; shift
  local t0=$SECONDS
  timeout -k 10 "$(left 90)" "$@" --out "/tmp/photos/$name" --preset balanced --data.limit "$PHOTOS" --data.batch_size 64 --data.num_workers 12 \
    --trainer.accelerator "$ACCEL" > "$S/photos-$name.log" 2>&1
  local rc=$? n; n=$(grep -c '"status": "ok"' "/tmp/photos/$name/manifest.jsonl" 2>/dev/null)
  echo "photos $name: $n ok in $((SECONDS - t0)) s wall (rc $rc; process start included)" | tee -a "$S/stages.txt"
  # one JSON row per run for benchmarks/results (issue 25): photos_per_s over the whole command, start-up included
  $PY -c "import json, sys; n, s = int(sys.argv[2] or 0), max(int(sys.argv[3]), 1); print(json.dumps({'run': sys.argv[1], 'accelerator': open(sys.argv[4]).readline().split(',')[0].strip(), 'photos': n, 'wall_s': s, 'photos_per_s': round(n / s, 2), 'flags': sys.argv[5]}))" \
    "$name" "$n" "$((SECONDS - t0))" "$S/machine.txt" "$*" >> "$S/photos.jsonl" 2>/dev/null
  cp "/tmp/photos/$name/manifest.jsonl" "$S/photos-$name.manifest.jsonl" 2>/dev/null
}
if on photos; then
s=$SECONDS
photos check /tmp/bin/tipim protect .gpu/photos
photos nocheck $PY -m cProfile -o "$S/photos-nocheck.prof" -m tipim.cli protect .gpu/photos --data.check none
photos compile /tmp/bin/tipim protect .gpu/photos --data.check none --model.compile true
stage photos $s 0
fi

if on protocol; then
s=$SECONDS
mkdir -p /tmp/results && cp results/reproduce/protocol.json /tmp/results/
timeout -k 10 "$(left 200)" $PY -m tipim.cli reproduce --stages ${REPRODUCE:-table3} --methods ${TABLE3:-mim dim mt-dim center-opt tipim} --aligned .gpu/lfw-aligned \
  --out /tmp/results --runs /tmp/runs --no-evaluate --protect-args="--trainer.accelerator $ACCEL ${PROTECT_EXTRA:-}" ${PROBES:+--probes $PROBES} \
  > "$S/protocol.log" 2>&1
rc=$?; stage "protocol (500 probes: ${TABLE3:-mim dim mt-dim center-opt tipim})" $s $rc
fi
for r in /tmp/runs/*; do echo "$(basename "$r"): $(grep -c '"status": "ok"' "$r/manifest.jsonl" 2>/dev/null) ok" | tee -a "$S/stages.txt"; cp "$r/manifest.jsonl" "$S/$(basename "$r").manifest.jsonl"; done

s=$SECONDS
on compile && timeout -k 10 "$(left 200)" $PY benchmarks/bench_device.py --device "$DEV" --root .gpu/lfw-aligned --faces "$FACES" --steps "${COMPILE_STEPS:-$STEPS}" \
  --batches 512 --shortlists 1 0 --compile --cpu-faces 4 --out "$S/compile" > "$S/compile.log" 2>&1
rc=$?; on compile && stage compile $s $rc

tar cf "$OUT/small.tar" -C "$OUT" small && rm -rf "$S"
(cd /tmp/runs 2>/dev/null && tar cf - tipim | split -b 15M - "$OUT/tipim.tar.part-")
(cd /tmp/runs 2>/dev/null && tar cf - center-opt | split -b 15M - "$OUT/center-opt.tar.part-")
ls -la "$OUT"
