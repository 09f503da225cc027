#!/usr/bin/env bash
# The whole experiment: prepare -> train K = 1..5 x seeds x sizes -> evaluate -> plot -> REPORT.md
#
#   bash sweep.sh                        # arXiv, one GPU (or several: one run per GPU)
#   bash sweep.sh synthetic              # synthetic chains on CPU, minutes, with Bayes references
#   SEEDS="1 2" SIZES="tiny small" bash sweep.sh --learning_rate=6e-4   # extra args go to train.py
#
# Stop it at any time (Ctrl-C, kill) and start it again: finished runs are skipped, interrupted
# runs resume from their checkpoints, evaluations are not repeated.
set -uo pipefail
cd "$(dirname "$0")"

MODE=arxiv
if [[ "${1:-}" == "synthetic" || "${1:-}" == "arxiv" ]]; then MODE=$1; shift; fi
EXTRA=("$@")                                  # --key=value arguments passed to train.py

# ---- settings (environment variables override) -----------------------------------------------
SEEDS=${SEEDS:-"1 2 3"}                       # seeds per K
KS=${KS:-"1 2 3 4 5"}                         # numbers of components
OUT=${OUT:-out}                               # runs root
RESULTS=${RESULTS:-results}                   # figures, tables, REPORT.md
PYTHON=${PYTHON:-python}
PARALLEL=${PARALLEL:-auto}                    # runs side by side: GPUs visible, or cores on CPU
FORCE_CPU=${FORCE_CPU:-0}                     # 1: run the arXiv sweep even without a GPU
EVAL_ARGS=${EVAL_ARGS:-""}                    # e.g. "--eval_windows=500"
if [[ $MODE == arxiv ]]; then
  SIZES=${SIZES:-"small"}                     # model sizes: config/<size>.py
  DATA=${DATA:-data/arxiv}
  PREPARE_ARGS=${PREPARE_ARGS:-""}            # e.g. "--data_files=/path/to/no_ref"
  BASE_CONFIG=""
else
  SIZES="synthetic"                           # the synthetic config carries its own model size
  DATA=${DATA:-data/synthetic}
  PREPARE_ARGS=${PREPARE_ARGS:-""}
  BASE_CONFIG="config/synthetic.py"
  EVAL_ARGS=${EVAL_ARGS:-"--cpu_threads=1"}   # runs are evaluated side by side, one core each
fi
# -----------------------------------------------------------------------------------------------

mkdir -p "$OUT"
SWEEP_LOG="$OUT/sweep.log"
say() { echo "[$(date '+%H:%M:%S')] $*" | tee -a "$SWEEP_LOG"; }
FAILED="$OUT/.sweep_failed"
rm -f "$FAILED"

SLOT_PIDS=()
on_interrupt() {
  say "interrupted: stopping runs (each saves a checkpoint); run the same command to resume"
  for pid in "${SLOT_PIDS[@]}"; do pkill -TERM -P "$pid" 2>/dev/null; kill -TERM "$pid" 2>/dev/null; done
  wait
  exit 130
}
trap on_interrupt INT TERM

say "sweep $MODE: K in {$KS}, seeds {$SEEDS}, sizes {$SIZES}, data $DATA, extra: ${EXTRA[*]:-none}"

# ---- 1. where runs go (an arXiv sweep without a GPU stops here, before any download) --------
N_GPUS=$($PYTHON -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [[ $MODE == arxiv && $N_GPUS -eq 0 && $FORCE_CPU != 1 ]]; then
  $PYTHON - "$DATA" "$SIZES" "$KS" "$SEEDS" <<'EOF'
import json, os, sys
from model import GPT, GPTConfig
data, sizes, ks, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
stats = os.path.join(data, "stats.json")
budget = json.load(open(stats))["default_budget"] if os.path.exists(stats) else 50_000_000
cpu_flops = 5e10          # what 2-4 cores sustain on these models in float32, roughly
total = 0.0
for size in sizes:
    cfg = {}
    exec(open(f"config/{size}.py").read(), {}, cfg)
    model = GPT(GPTConfig(vocab_size=50257, n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"]))
    total += model.flops_per_token() * budget * 4 * len(ks) * len(seeds)
print(f"no GPU visible: the arXiv sweep ({len(ks) * len(seeds) * len(sizes)} runs, {budget:,} tokens x 4 "
      f"epochs each) would take about {total / cpu_flops / 86400:.0f} days on this CPU.\n"
      f"Run `bash sweep.sh synthetic` for the CPU-sized experiment, or FORCE_CPU=1 bash sweep.sh to insist.")
EOF
  exit 1
fi
# ---- 2. data ------------------------------------------------------------------------------------
if [[ ! -f "$DATA/meta.json" ]]; then
  say "preparing $DATA"
  $PYTHON prepare.py --source="$MODE" --data_dir="$DATA" $PREPARE_ARGS 2>&1 | tee -a "$SWEEP_LOG"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || { say "prepare failed (see above)"; exit 1; }
fi

if [[ $PARALLEL == auto ]]; then
  if [[ $N_GPUS -gt 0 ]]; then PARALLEL=$N_GPUS; else PARALLEL=$(nproc); fi
  [[ $MODE == arxiv && $N_GPUS -eq 0 ]] && PARALLEL=1
fi

RUNS=()
for size in $SIZES; do for k in $KS; do for seed in $SEEDS; do
  RUNS+=("$size:$k:$seed")
done; done; done
say "${#RUNS[@]} runs, $PARALLEL at a time"

# ---- 3. train + evaluate each run (one slot per GPU, or per core on CPU) ---------------------------
run_one() {   # size k seed slot
  local size=$1 k=$2 seed=$3 slot=$4
  local configs=$BASE_CONFIG
  [[ $MODE == arxiv ]] && configs="config/$size.py"
  local name="$(basename "$DATA")_k${k}_${size}_s${seed}"
  [[ $MODE == synthetic ]] && name="$(basename "$DATA")_k${k}_s${seed}"
  local dir="$OUT/$name"
  if [[ $N_GPUS -gt 1 ]]; then          # one GPU per slot, from the list the user gave, if any
    local gpus
    IFS=, read -r -a gpus <<<"${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((N_GPUS - 1)))}"
    export CUDA_VISIBLE_DEVICES=${gpus[$((slot % ${#gpus[@]}))]}
  fi
  if [[ -f "$dir/eval.json" ]]; then
    say "$name: finished and evaluated, skipped"; return 0
  fi
  if [[ -f "$dir/done" ]]; then
    say "$name: trained, evaluating"
  else
    [[ -f "$dir/ckpt.pt" ]] && say "$name: resuming" || say "$name: training"
    mkdir -p "$dir"
    $PYTHON train.py $configs --data_dir="$DATA" --k="$k" --seed="$seed" --run_name="$name" \
      --out_dir="$dir" "${EXTRA[@]}" >>"$dir/train.log" 2>&1
    local rc=$?
    if [[ $rc -ne 0 ]]; then
      [[ $rc -eq 143 || $rc -eq 130 ]] && return $rc
      say "$name: training FAILED (exit $rc): $(tail -n 1 "$dir/train.log")"
      echo "$name" >>"$FAILED"; return 0
    fi
  fi
  if $PYTHON evaluate.py "$dir" $EVAL_ARGS >>"$dir/train.log" 2>&1; then
    say "$(tail -n 1 "$dir/train.log")"
  else
    say "$name: evaluation FAILED: $(tail -n 1 "$dir/train.log")"; echo "$name" >>"$FAILED"
  fi
}

for ((slot = 0; slot < PARALLEL; slot++)); do
  (
    trap 'exit 143' TERM
    for ((i = slot; i < ${#RUNS[@]}; i += PARALLEL)); do
      IFS=: read -r size k seed <<<"${RUNS[$i]}"
      run_one "$size" "$k" "$seed" "$slot" || exit $?
    done
  ) &
  SLOT_PIDS+=($!)
done
wait "${SLOT_PIDS[@]}"

# ---- 4. figures, statistics, report --------------------------------------------------------------
if [[ -f "$FAILED" ]]; then
  say "some runs failed: $(tr '\n' ' ' <"$FAILED"); their logs are in $OUT/<run>/train.log"
fi
say "plotting"
$PYTHON plot.py --out="$OUT" --results="$RESULTS" 2>&1 | tee -a "$SWEEP_LOG"
[[ ${PIPESTATUS[0]} -eq 0 ]] || { say "plot.py failed (see above)"; exit 1; }
say "report: $RESULTS/REPORT.md"
[[ -f "$FAILED" ]] && exit 1
exit 0
