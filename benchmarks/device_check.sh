#!/usr/bin/env bash
# One short accelerator session (run through the device tool; never needed by the project):
#  1. engine throughput, fp32 against bf16 autocast, with a CPU baseline on the same machine;
#  2. a 1-GPU DDP run: the reproduction's table3 stage with --trainer.strategy ddp;
#  3. the other protect-only stages (gamma, schedule) beside it; evaluated later on the CPU
#     machine, where all four evaluation models are (facenet is too big to travel).
# Expects: .whl (kornia, kornia_rs, onnx2torch, jsonargparse, docstring_parser, typeshed_client),
# .gpu/cache/models/arcface-mbf, .gpu/lfw-aligned (the seeded probe subset and the targets).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site TIPIM_CACHE=$PWD/.gpu/cache PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -c "import sys; from tipim.cli import main; sys.exit(main())" "$@"\n' > /tmp/bin/tipim && chmod +x /tmp/bin/tipim
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning, kornia; print('torch', torch.__version__, 'lightning', lightning.__version__, 'kornia', kornia.__version__, torch.cuda.get_device_name())"
PROBES=${PROBES:-150}
common=(BIN=/tmp/bin ALIGNED=.gpu/lfw-aligned PROBES=$PROBES EVALUATE=0 RUNS=/tmp/runs OUT=/tmp/results)
mkdir -p /tmp/results && cp results/reproduce/protocol.json /tmp/results/
start=$SECONDS
env "${common[@]}" STAGES=table3 PROTECT_ARGS="--trainer.accelerator gpu --trainer.strategy ddp" \
  timeout "${CHAIN_S:-420}" bash scripts/reproduce.sh > "$OUT/table3.log" 2>&1 &
env "${common[@]}" STAGES=gamma PROTECT_ARGS="--trainer.accelerator gpu" timeout "${CHAIN_S:-420}" bash scripts/reproduce.sh > "$OUT/gamma.log" 2>&1 &
env "${common[@]}" STAGES=schedule PROTECT_ARGS="--trainer.accelerator gpu" timeout "${CHAIN_S:-420}" bash scripts/reproduce.sh > "$OUT/schedule.log" 2>&1 &
python3 benchmarks/bench_device.py --root .gpu/lfw-aligned --faces "${BENCH_FACES:-256}" --steps 20 --batches 64 256 --shortlists 0 1 --compile --out "$OUT" 2>&1 | tee "$OUT/bench.log"
wait
echo "protect stages took $((SECONDS - start)) s"
for r in /tmp/runs/*; do echo "$(basename "$r"): $(grep -c '"status": "ok"' "$r/manifest.jsonl" 2>/dev/null) ok"; done
cd /tmp/runs && tar cf "$OUT/runs-a.tar" mim dim mt-dim; tar cf "$OUT/runs-b.tar" center-opt tipim
tar cf "$OUT/runs-c.tar" tipim-gamma0 tipim-gamma2 tipim-gamma3; tar cf "$OUT/runs-d.tar" tipim-every2 tipim-every5 tipim-every10
cat "$OUT"/table3.log "$OUT"/gamma.log "$OUT"/schedule.log > "$OUT/stages.log"; rm -f "$OUT"/{table3,gamma,schedule}.log
ls -la "$OUT"
