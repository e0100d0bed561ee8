#!/usr/bin/env bash
# The seed's long-context claim in miniature (issue 11): a Transformer (full attention), a
# sliding-window Transformer (window 256: a fixed-size state), TTT-Linear and TTT-MLP (Transformer
# backbone) and TTT-Linear (Mamba backbone), ~0.85M parameters each (within 3%), trained one after
# the other on the same windows of 2048 bytes of the King James Bible (same seed: the same batches,
# the same token budget), then evaluated with engram-eval: held-out bits per byte by position,
# inference cost at 2048 tokens. Writes bench/results/ttt_context_curve/{table.md,curve.svg,*.csv}.
#
#   bash bench/ttt_context_curve.sh              # build, train (resumes a killed run), evaluate, tabulate
#   MODELS="ttt-linear swa" bash bench/ttt_context_curve.sh   # a subset
#
# Every run checkpoints every 20 steps; re-running the script continues where it stopped. Runs are
# niced (shared machine) and strictly sequential; wall time and load average go to runs.log.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build/ttt-curve}
RUNS=${RUNS:-$BUILD/runs}
OUT=${OUT:-$ROOT/bench/results/ttt_context_curve}
MODELS=${MODELS:-"ttt-linear swa attention ttt-mlp ttt-linear-mamba"}
THREADS=${THREADS:-2}
STEPS=${STEPS:-160}      # 160 steps x 4 sequences x 2048 tokens = 1.31M training tokens per model
BATCH=${BATCH:-4}
CONTEXT=2048
NICE=${NICE:-5}

if [[ -z "${SKIP_BUILD:-}" ]]; then
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
  nice -n "$NICE" cmake --build "$BUILD" --target engram-train engram-eval -j "$THREADS"
fi
TRAIN=$BUILD/examples/engram-train
EVAL=$BUILD/examples/engram-eval
mkdir -p "$RUNS" "$OUT"

# Same width, depth, heads and data for all; d_ff brings every model within 3% of the attention
# model's parameters (TTT-MLP's inner W1/W2 paid for by a narrower SwiGLU, as the paper's
# FLOP-matched variants change the FFN width).
common=(--corpus kjv --arch llama --d-model 128 --layers 4 --heads 4 --context $CONTEXT --batch "$BATCH" --steps "$STEPS"
        --lr 3e-3 --min-lr 3e-4 --warmup 16 --log-every 10 --eval-every 40 --eval-batches 2 --checkpoint-every 20
        --seed 1 -t "$THREADS" --resume)
args_of() {
  case "$1" in
    attention) echo "--mixer attention" ;;
    swa) echo "--mixer swa --window 256" ;;
    ttt-linear) echo "--mixer ttt-linear --backbone transformer" ;;
    ttt-mlp) echo "--mixer ttt-mlp --backbone transformer --d-ff 256" ;;
    ttt-linear-mamba) echo "--mixer ttt-linear --backbone mamba" ;;
    *) echo "unknown model $1" >&2; exit 2 ;;
  esac
}

for m in $MODELS; do
  dir=$RUNS/$m
  if [[ ! -f $dir/done ]]; then
    start=$(date +%s); load0=$(cut -d' ' -f1-3 /proc/loadavg)
    # shellcheck disable=SC2046
    nice -n "$NICE" "$TRAIN" --out "$dir" $(args_of "$m") "${common[@]}" 2>&1 | tee -a "$dir.train.log"
    end=$(date +%s); load1=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "$m train wall_s=$((end - start)) load_start=[$load0] load_end=[$load1]" | tee -a "$OUT/runs.log"
    touch "$dir/done"
  fi
  cp "$dir/train.csv" "$OUT/${m}_train.csv"
  grep -m1 "training FLOPs per token" "$dir.train.log" | sed 's/.*: //' > "$OUT/${m}_train_flops.txt"
  grep -m1 "parameters" "$dir.train.log" | sed 's/.*model, \([0-9]*\) parameters.*/\1/' > "$OUT/${m}_params.txt"
  start=$(date +%s)
  nice -n "$NICE" "$EVAL" --model "$dir/checkpoint" --no-tasks --bpb --cost --corpus kjv --context $CONTEXT --windows 32 --bucket 256 \
    --decode-steps 64 -t "$THREADS" --out "$OUT/$m" | tee "$OUT/${m}_eval.txt"
  echo "$m eval wall_s=$(($(date +%s) - start)) load=[$(cut -d' ' -f1-3 /proc/loadavg)]" | tee -a "$OUT/runs.log"
done
python3 "$ROOT/bench/ttt_context_curve.py" "$OUT" $MODELS
