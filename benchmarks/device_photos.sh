#!/usr/bin/env bash
# Protect the protocol's probe *photos* (full 250x250 LFW images) with TIP-IM, plain and robust,
# on an accelerator (through the device tool); the attacker-pipeline evaluation (JPEG, re-detect,
# re-align, rank with all four models) runs afterwards on the CPU machine:
#   tipim evaluate --pipeline photo --jpeg 0 95 75 --runs runs/photos/tipim-photo{,-robust} ...
# Expects .whl, .gpu/cache/models/{arcface-mbf,mtcnn-*}, .gpu/lfw (the photos),
# .gpu/lfw-aligned (targets + an alignment.jsonl pointing at .gpu/lfw).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -d .whl ] && [ "${PY:-python3}" = python3 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=$PWD/src:/tmp/site
fi
export TIPIM_CACHE=$PWD/.gpu/cache PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
RUNS=${RUNS:-/tmp/photo-runs}; LIMIT=${LIMIT:-150}; ACCEL=${ACCEL:-gpu}; EXTRA=${EXTRA:-}
PY=${PY:-python3}
protect() {  # name, extra flags
  local name=$1; shift
  $PY -c "import sys; from tipim.cli import main; sys.exit(main())" protect results/reproduce/protocol.json \
    --out "$RUNS/$name" --targets results/reproduce/protocol.json --preset balanced --faces center \
    --data.root .gpu/lfw-aligned --data.limit "$LIMIT" --data.batch_size 8 --data.num_workers 3 \
    --model.method "$name" --model.selector '{"class_path": "tipim.attack.GreedyInsertion", "init_args": {"every": 1}}' \
    --trainer.accelerator "$ACCEL" $EXTRA "$@" > "$OUT/$name.log" 2>&1
  echo "$name: rc $? $(tail -1 "$OUT/$name.log")"
}
start=$SECONDS
protect tipim-photo & protect tipim-photo-robust --robust & wait
echo "photo runs took $((SECONDS - start)) s"
(cd "$RUNS" && tar cf - tipim-photo tipim-photo-robust | split -b 15M - "$OUT/photo-runs.tar.part-")
ls -la "$OUT"
