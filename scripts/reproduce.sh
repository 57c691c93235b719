#!/usr/bin/env bash
# The paper's LFW experiment (Tables 3-5), end to end. `make reproduce` runs it; PROBES limits the
# number of protected probes (a seeded subset, the same for every method); unset = all 500.
#   PROBES=100 STAGES="table3 schedule" bash scripts/reproduce.sh
set -euo pipefail
BIN=${BIN:-.venv/bin}
ALIGNED=${ALIGNED:-data/lfw-aligned}
OUT=${OUT:-results/reproduce}
RUNS=${RUNS:-runs/reproduce}
PROBES=${PROBES:-}
STAGES=${STAGES:-"table3 schedule ensemble gamma"}
PROTOCOL=$OUT/protocol.json
MODELS="arcface-mbf sface facenet dlib-resnet"
mkdir -p "$OUT" "$RUNS"
[ -f "$PROTOCOL" ] || $BIN/tipim protocol build --aligned "$ALIGNED" --out "$PROTOCOL" --seed 0
limit=()
[ -n "$PROBES" ] && limit=(--data.limit "$PROBES" --data.limit_seed 0)

protect() {  # name, method, extra args...
  local name=$1 method=$2; shift 2
  echo "$BIN/tipim protect ... $method $* -> $RUNS/$name" >> "$OUT/commands.txt"
  $BIN/tipim protect --config configs/protect.yaml --config "configs/method/$method.yaml" \
    --data.faces "$PROTOCOL" --data.targets "$PROTOCOL" --data.output_dir "$RUNS/$name" \
    --trainer.enable_progress_bar false "${limit[@]}" "$@"
}
evaluate() {  # table name, title, runs...
  local table=$1 title=$2; shift 2
  echo "$BIN/tipim evaluate --runs $* -> $OUT/$table" >> "$OUT/commands.txt"
  $BIN/tipim evaluate --protocol "$PROTOCOL" --models $MODELS --out "$OUT/$table" --title "$title" --runs "$@"
}

for stage in $STAGES; do
  case $stage in
    table3)  # methods on the arcface-mbf surrogate
      for m in mim dim mt-dim center-opt tipim; do protect "$m" "$m"; done
      evaluate table3 "Methods, arcface-mbf surrogate (Table 3 layout)" "$RUNS"/{mim,dim,mt-dim,center-opt,tipim} ;;
    schedule)  # greedy selection every s-th step: speed against success
      for s in 2 5 10; do protect "tipim-every$s" tipim --model.method "tipim-every$s" --model.selector.init_args.every "$s"; done
      evaluate schedule "Greedy selection every s-th step" "$RUNS"/tipim "$RUNS"/tipim-every{2,5,10} ;;
    ensemble)  # leave-one-out ensembles of the other zoo models
      runs=()
      for held in $MODELS; do
        members=$(for m in $MODELS; do [ "$m" != "$held" ] && printf '%s,' "$m"; done)
        protect "tipim-loo-$held" tipim --model.method "tipim-loo-$held" --model.surrogates "[${members%,}]"
        runs+=("$RUNS/tipim-loo-$held")
      done
      evaluate ensemble "TIP-IM with leave-one-out ensembles (Table 4 layout)" "${runs[@]}" ;;
    gamma)  # naturalness weight (Table 5 layout)
      for g in 0 1 2 3; do protect "tipim-gamma$g" tipim --model.method "tipim-gamma$g" --model.gamma "$g"; done
      evaluate gamma "TIP-IM, gamma sweep (Table 5 layout)" "$RUNS"/tipim-gamma{0,1,2,3} ;;
  esac
done
