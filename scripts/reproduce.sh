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
STAGES=${STAGES:-"table3 schedule ensemble gamma photos"}
PROTECT_ARGS=${PROTECT_ARGS:-}   # extra flags for every protect run, e.g. "--trainer.accelerator gpu"
ENSEMBLE_EVERY=${ENSEMBLE_EVERY:-1}  # greedy selection every s-th step in the (5x dearer) ensemble stage
HELD=${HELD:-}                   # ensemble stage: only these held-out models (e.g. to run them in parallel)
EVALUATE=${EVALUATE:-1}          # 0: protect only (evaluate later, e.g. where all four models are)
PROTOCOL=$OUT/protocol.json
MODELS="arcface-mbf sface facenet dlib-resnet"   # surrogates (the ensemble stage leaves each out in turn)
EVAL_MODELS="$MODELS edgeface-s"                 # edgeface-s never makes a mask here: a black box for every table
mkdir -p "$OUT" "$RUNS"
[ -f "$PROTOCOL" ] || $BIN/tipim protocol build --aligned "$ALIGNED" --out "$PROTOCOL" --seed 0
limit=()
[ -n "$PROBES" ] && limit=(--data.limit "$PROBES" --data.limit_seed 0)

protect() {  # name, method, extra args...
  local name=$1 method=$2; shift 2
  echo "$BIN/tipim protect ... $method $* -> $RUNS/$name" >> "$OUT/commands.txt"
  $BIN/tipim protect --config configs/protect.yaml --config "configs/method/$method.yaml" \
    --data.faces "$PROTOCOL" --data.targets "$PROTOCOL" --data.root "$ALIGNED" --data.output_dir "$RUNS/$name" \
    --trainer.enable_progress_bar false "${limit[@]}" $PROTECT_ARGS "$@"
}
evaluate() {  # table name, title, runs...
  local table=$1 title=$2; shift 2
  [ "$EVALUATE" = 1 ] || return 0
  echo "$BIN/tipim evaluate --runs $* -> $OUT/$table" >> "$OUT/commands.txt"
  $BIN/tipim evaluate --protocol "$PROTOCOL" --models $EVAL_MODELS --out "$OUT/$table" --title "$title" --runs "$@"
}

for stage in $STAGES; do
  case $stage in
    table3)  # methods on the arcface-mbf surrogate
      for m in ${TABLE3:-mim dim mt-dim center-opt tipim}; do protect "$m" "$m"; done
      evaluate table3 "Methods, arcface-mbf surrogate (Table 3 layout)" "$RUNS"/{mim,dim,mt-dim,center-opt,tipim} ;;
    schedule)  # greedy selection every s-th step: speed against success
      for s in 2 5 10; do protect "tipim-every$s" tipim --model.method "tipim-every$s" --model.selector.init_args.every "$s"; done
      evaluate schedule "Greedy selection every s-th step" "$RUNS"/tipim "$RUNS"/tipim-every{2,5,10} ;;
    ensemble)  # leave-one-out ensembles of the other zoo models
      runs=()
      for held in ${HELD:-$MODELS}; do
        members=$(for m in $MODELS; do [ "$m" = "$held" ] || printf '%s,' "$m"; done)
        name=tipim-loo-$held; [ "$ENSEMBLE_EVERY" = 1 ] || name=$name-every$ENSEMBLE_EVERY
        protect "$name" tipim --model.method "$name" --model.surrogates "[${members%,}]" \
          --model.selector.init_args.every "$ENSEMBLE_EVERY"
        runs+=("$RUNS/$name")
      done
      table=ensemble; [ "$ENSEMBLE_EVERY" = 1 ] || table=ensemble-every$ENSEMBLE_EVERY
      evaluate "$table" "TIP-IM with leave-one-out ensembles (Table 4 layout)" "${runs[@]}" ;;
    gamma)  # naturalness weight (Table 5 layout)
      # gamma 1 is the tipim run of table3 (configs/method/tipim.yaml), so it is not run twice
      for g in 0 2 3; do protect "tipim-gamma$g" tipim --model.method "tipim-gamma$g" --model.gamma "$g"; done
      evaluate gamma "TIP-IM, gamma sweep (Table 5 layout; the tipim row is gamma 1)" "$RUNS"/tipim-gamma0 "$RUNS"/tipim "$RUNS"/tipim-gamma{2,3} ;;
    photos)  # whole LFW photos (issue 5): plain and robust masks, seen through an attacker's pipeline
      for name in tipim-photo tipim-photo-robust; do
        flags=(--no-robust); [ "$name" = tipim-photo-robust ] && flags=(--robust)
        echo "$BIN/tipim protect $PROTOCOL ... ${flags[*]} -> $RUNS/$name" >> "$OUT/commands.txt"
        $BIN/tipim protect "$PROTOCOL" --out "$RUNS/$name" --targets "$PROTOCOL" --preset balanced --faces center \
          --data.root "$ALIGNED" --model.method "$name" "${limit[@]}" \
          --model.selector '{"class_path": "tipim.attack.GreedyInsertion", "init_args": {"every": 1}}' $PROTECT_ARGS "${flags[@]}"
      done
      if [ "$EVALUATE" = 1 ]; then
        echo "$BIN/tipim evaluate --pipeline photo --jpeg 0 95 75 --runs $RUNS/tipim-photo{,-robust} -> $OUT/photos" >> "$OUT/commands.txt"
        $BIN/tipim evaluate --protocol "$PROTOCOL" --models $EVAL_MODELS --out "$OUT/photos" --pipeline photo --jpeg 0 95 75 \
          --title "Whole photos through an attacker's pipeline (re-encode, re-detect, re-align)" --runs "$RUNS"/tipim-photo{,-robust}
      fi ;;
  esac
done
