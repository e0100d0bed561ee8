#!/usr/bin/env bash
# NAMM against the training-free baselines at the same cache budgets (issue 12): a host trained by
# engram-train on a memory task reads held-out samples (engram-eval's eval_seed stream, never seen by
# training or by the NAMM fitness) with each policy at 25%, 50% and 75% of the cache, and with the
# full cache; every policy holds the same number of tokens per KV head when the question is answered.
# Inputs are read token by token (READ_CHUNK=1), so the per-step policies decide after every token.
# Writes bench/results/namm_budgets/{table.md,accuracy.svg,*.csv} (namm_budgets.py tabulates).
#
#   HOST=tests/fixtures/namm_host NAMM=runs/namm/evolved.safetensors bash bench/namm_budgets.sh
#   POLICIES="namm h2o" BUDGETS="0.25" bash bench/namm_budgets.sh   # a subset
#
# NAMM (one weights file, evolved at one cap) runs at every budget as its cap. Each cell is skipped
# when its CSV exists, so a killed run continues.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build/release}
HOST=${HOST:-$ROOT/tests/fixtures/namm_host}
NAMM=${NAMM:-$ROOT/tests/fixtures/namm_host/namm.safetensors}
OUT=${OUT:-$ROOT/bench/results/namm_budgets}
TASK=${TASK:-fact_detection}
LENGTH=${LENGTH:-1024}
SAMPLES=${SAMPLES:-300}
THREADS=${THREADS:-2}
READ_CHUNK=${READ_CHUNK:-1}  # token by token, as the baselines' papers evict (NAMM steps at its n_up anyway)
BUDGETS=${BUDGETS:-"0.25 0.5 0.75"}
POLICIES=${POLICIES:-"namm h2o knorm streaming snapkv tova expected_attention keydiff recency"}

if [[ -z "${SKIP_BUILD:-}" ]]; then
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
  cmake --build "$BUILD" --target engram-eval -j "$THREADS"
fi
EVAL=$BUILD/examples/engram-eval
mkdir -p "$OUT"
common=(--model "$HOST" --task "$TASK" --lengths "$LENGTH" --samples "$SAMPLES" --read-chunk "$READ_CHUNK" -t "$THREADS")

cell() {  # name, extra args...
  local name=$1
  shift
  [[ -f $OUT/${name}_tasks.csv ]] && return
  "$EVAL" "${common[@]}" "$@" --out "$OUT/$name" | tee "$OUT/$name.log"
}
cell full --policy none
for b in $BUDGETS; do
  for p in $POLICIES; do
    if [[ $p == namm ]]; then
      cell "namm_$b" --policy namm --namm-weights "$NAMM" --budget "$b"
    else
      cell "${p}_$b" --policy "$p" --budget "$b"
    fi
  done
done
python3 "$ROOT/bench/namm_budgets.py" "$OUT"
