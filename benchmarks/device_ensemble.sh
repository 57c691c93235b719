#!/usr/bin/env bash
# The reproduction's leave-one-out ensemble stage (Table 4 layout), protect only, on an
# accelerator through the device tool; evaluated afterwards on the CPU machine.
#
# The four zoo models weigh 159 MiB and one call carries at most 64 MiB, so they travel in three
# calls to one warm machine, each stashing its part in /root/stash (split facenet, joined here).
# Prepared here (M=~/.cache/tipim/models; model files only, not the .sha256 stamps):
#   mkdir -p .gpu/xfer-a/arcface-mbf .gpu/xfer-b .gpu/xfer-c/sface .gpu/xfer-c/dlib-resnet
#   split -b 34M $M/facenet/facenet_keras.h5 .gpu/xfer-a/facenet_keras.h5.part-
#   mv .gpu/xfer-a/facenet_keras.h5.part-a[bc] .gpu/xfer-b/; cp $M/arcface-mbf/*.onnx .gpu/xfer-a/arcface-mbf/
#   cp $M/sface/*.onnx .gpu/xfer-c/sface/; cp $M/dlib-resnet/*.dat .gpu/xfer-c/dlib-resnet/
#   call 1: carry .whl .gpu/lfw-aligned .gpu/xfer-a (arcface)   -> `cp -r ... /root/stash`
#   call 2: carry .gpu/xfer-b                                     -> `cp -r ... /root/stash`
#   call 3: carry .gpu/xfer-c, run this script
# The stamps stay behind, so the loader checks every model's full sha256 against the registry
# after the join: a broken transfer cannot pass.
# The four held-out runs (three surrogates each) run at the same time, one process each.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
S=${STASH:-/root/stash}
PY=${PY:-python3}; ACCEL=${ACCEL:-gpu}; EXTRA=${EXTRA:-}   # PY=.venv/bin/python ACCEL=cpu: a dry run here
[ "$PY" = python3 ] && { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$S"/.whl/*.whl || exit 1; }
C=/tmp/cache/models; mkdir -p "$C"
cp -r "$S"/xfer-a/arcface-mbf "$C"/
cp -r .gpu/xfer-c/sface .gpu/xfer-c/dlib-resnet "$C"/
mkdir -p "$C"/facenet && cat "$S"/xfer-a/facenet_keras.h5.part-* "$S"/xfer-b/facenet_keras.h5.part-* > "$C"/facenet/facenet_keras.h5
rm -rf .gpu/lfw-aligned && mkdir -p .gpu && cp -r "$S"/lfw-aligned .gpu/
export PYTHONPATH=$PWD/src:/tmp/site TIPIM_CACHE=/tmp/cache PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
mkdir -p /tmp/results && cp results/reproduce/protocol.json /tmp/results/
start=$SECONDS
for held in arcface-mbf sface facenet dlib-resnet; do
  timeout "${CHAIN_S:-480}" $PY -m tipim.cli reproduce --stages ensemble --held $held --ensemble-every ${ENSEMBLE_EVERY:-5} \
    --aligned .gpu/lfw-aligned --probes ${PROBES:-150} --out /tmp/results --runs /tmp/runs --no-evaluate \
    --protect-args="--trainer.accelerator $ACCEL $EXTRA" > "$OUT/$held.log" 2>&1 &
done
wait
echo "ensemble runs took $((SECONDS - start)) s"
cd /tmp/runs && for r in *; do echo "$r: $(grep -c '"status": "ok"' "$r/manifest.jsonl" 2>/dev/null) ok"; tar cf "$OUT/$r.tar" "$r"; done
ls -la "$OUT"
