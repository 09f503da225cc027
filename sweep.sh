#!/usr/bin/env bash
# The whole experiment: prepare -> train K = 1..5 x seeds x sizes, and beside every K >= 2 mixture
# its arms (steps- and exposure-matched controls, the tagged mixture) -> evaluate -> plot -> REPORT.md
#
#   bash sweep.sh                        # arXiv, one GPU (or several: one run per GPU)
#   bash sweep.sh synthetic              # synthetic chains on CPU, minutes, with exact references
#   SEEDS="1 2" SIZES="tiny small" bash sweep.sh --learning_rate=6e-4   # extra args go to train.py
#
# Stop it at any time (Ctrl-C, kill, even kill -9) and start it again: runs that are finished
# (the same identity: every setting that changes the numbers, and the data) are skipped,
# interrupted ones resume from their checkpoints, evaluations are not repeated. Runs with other
# settings (an ablation, a changed default) get their own folders beside the old ones.
set -uo pipefail
CALLER_DIR=$PWD                               # relative OUT, RESULTS, DATA are the caller's
cd "$(dirname "$0")"

MODE=arxiv
LIST=0                                        # --list: print the grid's train.py arguments, one run a line
EXTRA=()                                      # --key=value arguments passed to train.py
for arg in "$@"; do
  case "$arg" in
    synthetic|arxiv) MODE=$arg ;;
    --list) LIST=1 ;;
    --*=*) EXTRA+=("$arg") ;;
    *) echo "error: '$arg' is neither a mode (synthetic, arxiv), --list, nor a --key=value for train.py;" \
            "e.g. bash sweep.sh synthetic --list" >&2
       exit 2 ;;
  esac
done
for arg in "${EXTRA[@]}"; do                  # the grid is the sweep's: K, seeds, arms and folders
  case "$arg" in
    --k=*|--seed=*|--arm=*|--control=*|--components=*|--out_root=*|--out_dir=*|--run_name=*|--data_dir=*)
      echo "error: $arg is set by sweep.sh for every run of its grid; use KS=, SEEDS=, ARMS=, OUT= or DATA=" \
           "(or train.py for a single run)" >&2
      exit 2 ;;
  esac
done

# ---- settings (environment variables override) -----------------------------------------------
SEEDS=${SEEDS:-"1 2 3"}                       # seeds per K
KS=${KS:-"1 2 3 4 5"}                         # numbers of components
CONTROLS=${CONTROLS:-1}                       # 1: beside every K >= 2 mixture and seed, its arms (0: none)
ALL_ARMS="control exposure tagged"            # harness/mixture.py ARMS beside the mixture
ARMS=${ARMS:-$ALL_ARMS}                       # which arms: the steps-matched
                                              # and exposure-matched controls, the tagged mixture
OUT=${OUT:-out}                               # runs root
RESULTS=${RESULTS:-results}                   # figures, tables, REPORT.md
PYTHON=${PYTHON:-python}
PARALLEL=${PARALLEL:-auto}                    # runs at once in all: GPUs x RUNS_PER_GPU, or cores on CPU
RUNS_PER_GPU=${RUNS_PER_GPU:-1}               # runs side by side on one card (measured: 1 is fastest at
                                              # every size; BENCHMARKS.md, "runs per card")
FORCE_CPU=${FORCE_CPU:-0}                     # 1: run the arXiv sweep even without a GPU
EVAL_ARGS=${EVAL_ARGS:-""}                    # e.g. "--eval_windows=500"
if [[ $MODE == arxiv ]]; then
  SIZES=${SIZES:-"small"}                     # model sizes: config/<size>.py
  DATA=${DATA:-data/arxiv}
  PREPARE_ARGS=${PREPARE_ARGS:-""}            # e.g. "--data_files=/path/to/no_ref"
  BASE_CONFIG=""
else
  SIZES=${SIZES:-"synthetic"}                 # "synthetic": config/synthetic.py's own model; a size
                                              # sweep: e.g. SIZES="synthetic_xs synthetic" (README, RQ2)
  DATA=${DATA:-data/synthetic}
  PREPARE_ARGS=${PREPARE_ARGS:-""}
  BASE_CONFIG="config/synthetic.py"           # (plot.py's default experiment: runs.DEFAULT_CONFIGS)
  EVAL_ARGS=${EVAL_ARGS:-"--cpu_threads=1"}   # runs are evaluated side by side, one core each
fi
# -----------------------------------------------------------------------------------------------
for setting in "PARALLEL=$PARALLEL" "RUNS_PER_GPU=$RUNS_PER_GPU"; do     # runs at once: whole numbers
  [[ ${setting#*=} =~ ^[1-9][0-9]*$ || $setting == PARALLEL=auto ]] || {
    echo "error: $setting: use a whole number of runs, 1 or more (PARALLEL may also be auto)" >&2; exit 2; }
done
for k in $KS; do [[ $k =~ ^[1-9][0-9]*$ ]] || {
  echo "error: KS=\"$KS\": each K is a whole number of components, 1 or more, e.g. KS=\"1 3 5 8\"" >&2; exit 2; }
done
for seed in $SEEDS; do [[ $seed =~ ^(0|[1-9][0-9]*)$ ]] || {
  echo "error: SEEDS=\"$SEEDS\": each seed is a whole number, 0 or more, e.g. SEEDS=\"1 2 3\"" >&2; exit 2; }
done
for arm in $ARMS; do [[ " $ALL_ARMS " == *" $arm "* ]] || {
  echo "error: ARMS=\"$ARMS\": '$arm' is not an arm; use some of: $ALL_ARMS" >&2; exit 2; }
done

VISIBLE_GPUS=${CUDA_VISIBLE_DEVICES:-}        # the user's list, before slots narrow it per run
# paths the user gave are relative to where they stand, not to this script's folder
absolute() { if [[ $1 == /* ]]; then echo "$1"; else echo "$CALLER_DIR/$1"; fi; }
OUT=$(absolute "$OUT"); RESULTS=$(absolute "$RESULTS"); DATA=$(absolute "$DATA")
# a size as train.py arguments: a config file (config/<size>.py), or <L>L-<d>d-<h>h; "synthetic" adds nothing
size_args() {
  if [[ $1 == synthetic ]]; then return; fi
  if [[ -f config/$1.py ]]; then echo "config/$1.py"; return; fi
  if [[ $1 =~ ^([0-9]+)L-([0-9]+)d-([0-9]+)h$ ]]; then
    echo "--n_layer=${BASH_REMATCH[1]} --n_embd=${BASH_REMATCH[2]} --n_head=${BASH_REMATCH[3]} --size="
    return
  fi
  return 1
}
for size in $SIZES; do
  size_args "$size" >/dev/null || { echo "error: size '$size': use a config name (config/<size>.py) or" \
                                         "<L>L-<d>d-<h>h, e.g. SIZES=\"2L-32d-4h synthetic\"" >&2; exit 2; }
done
# a grid in which two cells are one run would train one folder twice at once: refuse it
for list in "$KS" "$SEEDS" "$SIZES" "$ARMS"; do
  if [[ $(tr ' ' '\n' <<<"$list" | grep -c .) -ne $(tr ' ' '\n' <<<"$list" | grep . | sort -u | wc -l) ]]; then
    echo "error: '$list' names a value twice; each K, seed, size and arm once" >&2; exit 2
  fi
done
# one run's train.py arguments, in RUN_ARGS: the one definition that --list, the size check and
# each run use
run_args() {   # size k seed arm
  # shellcheck disable=SC2206
  RUN_ARGS=($BASE_CONFIG $(size_args "$1") --data_dir="$DATA" --out_root="$OUT" --k="$2" --seed="$3" --arm="$4"
            "${EXTRA[@]}")
}
# the K-mixtures first (K = 1 before anything that is compared with it), then their arms: one list
# that sizes, K values and seeds loop over
RUNS=()
for size in $SIZES; do for k in $KS; do for seed in $SEEDS; do RUNS+=("$size:$k:$seed:mixture"); done; done; done
if [[ $CONTROLS == 1 ]]; then
  for arm in $ARMS; do for size in $SIZES; do for k in $KS; do [[ $k -ge 2 ]] || continue
    for seed in $SEEDS; do RUNS+=("$size:$k:$seed:$arm"); done; done; done; done
fi
if [[ $LIST == 1 ]]; then                     # e.g. a SLURM array: line $((SLURM_ARRAY_TASK_ID + 1))
  for entry in "${RUNS[@]}"; do
    IFS=: read -r size k seed arm <<<"$entry"
    run_args "$size" "$k" "$seed" "$arm"
    echo "${RUN_ARGS[*]}"
  done
  exit 0
fi

mkdir -p "$OUT" || { echo "error: cannot create $OUT; choose another OUT=" >&2; exit 2; }
for own in "$OUT/.sweep.lock" "$OUT/.sweep.pid" "$OUT/sweep.log"; do   # never written through a link
  if [[ -L $own ]]; then echo "error: $own is a symbolic link; remove it (rm $own) and run again" >&2; exit 2; fi
done
SWEEP_LOG="$OUT/sweep.log"
say() { echo "[$(date '+%H:%M:%S')] $*" | tee -a "$SWEEP_LOG"; }

# whether a process runs (a killed one that nobody has reaped yet, a zombie, does not)
alive() { local s; s=$(cut -d')' -f2 "/proc/$1/stat" 2>/dev/null) && [[ ${s:1:1} != Z ]] \
          || { [[ ! -d /proc ]] && kill -0 "$1" 2>/dev/null; }; }

# one sweep per runs folder: a lock every process of the sweep holds (they inherit it), released
# by the OS when the last of them ends, however they end
if command -v flock >/dev/null; then
  exec 9>>"$OUT/.sweep.lock"
  if ! flock -n 9; then
    holder=$(cat "$OUT/.sweep.pid" 2>/dev/null); holder=${holder#PID }
    if [[ -n $holder ]] && alive "$holder"; then
      echo "error: another sweep.sh (PID $holder) is running on $OUT; wait for it or stop it, or use" \
           "another OUT=" >&2
      exit 2
    fi
    echo "waiting for the runs of a stopped sweep (PID ${holder:-unknown}) to save their checkpoints"
    flock -w 120 9 || { echo "error: processes of a stopped sweep still hold $OUT/.sweep.lock;" \
                             "stop them (fuser $OUT/.sweep.lock)" >&2; exit 2; }
  fi
fi
echo "PID $$" >"$OUT/.sweep.pid"
# every train.py and evaluate.py this sweep starts ends itself when the sweep is gone (SWEEP_PID),
# so a sweep killed with -9 leaves nothing running that a restarted sweep could race
export SWEEP_PID=$$
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

ARMS_SAID=$([[ $CONTROLS == 1 ]] && echo "{$ARMS}" || echo off)
say "sweep $MODE: K in {$KS}, seeds {$SEEDS}, sizes {$SIZES}, arms $ARMS_SAID, data $DATA," \
    "extra: ${EXTRA[*]:-none}"

# ---- 1. where runs go (an arXiv sweep without a GPU stops here, before any download) --------
N_GPUS=${N_GPUS:-$($PYTHON -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)}
if [[ $MODE == arxiv && $N_GPUS -eq 0 && $FORCE_CPU != 1 ]]; then
  COST_ARMS=$([[ $CONTROLS == 1 ]] && echo "mixture $ARMS" || echo mixture)
  $PYTHON -m harness.cost --data_dir="$DATA" --sizes="${SIZES// /,}" --ks="${KS// /,}" \
    --seeds="${SEEDS// /,}" --arms="${COST_ARMS// /,}"
  exit 1
fi
# ---- 2. data ------------------------------------------------------------------------------------
if [[ ! -f "$DATA/meta.json" ]]; then
  say "preparing $DATA"
  $PYTHON prepare.py --source="$MODE" --data_dir="$DATA" $PREPARE_ARGS 2>&1 | tee -a "$SWEEP_LOG"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || { say "prepare failed (see above)"; exit 1; }
fi

# runs per card: on an H200 (bench.py --what=gpu, BENCHMARKS.md) one run of tiny, small or medium
# keeps the card busy, and 2-4 runs side by side (time-sliced, 3-4 GB each) gave 0.89-0.90x of one
# run's tokens/s, so the default is one run per card; RUNS_PER_GPU=2 can pay where runs leave it idle
if [[ $PARALLEL == auto ]]; then
  if [[ $N_GPUS -gt 0 ]]; then PARALLEL=$((N_GPUS * RUNS_PER_GPU)); else PARALLEL=$(nproc); fi
  [[ $MODE == arxiv && $N_GPUS -eq 0 ]] && PARALLEL=1
fi

if [[ $N_GPUS -gt 0 ]]; then
  say "${#RUNS[@]} runs, $PARALLEL at a time on $N_GPUS GPU(s) (slot i on GPU i mod $N_GPUS)"
else
  say "${#RUNS[@]} runs, $PARALLEL at a time"
fi

# ---- 3. train + evaluate each run (one slot per GPU, or per core on CPU) ---------------------------
# every run's folder is named by its identity: train.py says which, for the whole grid in one start
# (a line "error: ..." for a run it refuses; a run left without an answer asks again by itself)
DIRS=()
mapfile -t DIRS < <(for entry in "${RUNS[@]}"; do
    IFS=: read -r size k seed arm <<<"$entry"; run_args "$size" "$k" "$seed" "$arm"
    (IFS=$'\x1f'; echo "${RUN_ARGS[*]}")
  done | $PYTHON -c 'import sys, train; train.print_run_dirs(sys.stdin)' 2>/dev/null)
if [[ $(wc -w <<<"$SIZES") -gt 1 ]]; then
  declare -A SIZE_OF=()
  read -ra K_LIST <<<"$KS"; read -ra SEED_LIST <<<"$SEEDS"
  for i in "${!RUNS[@]}"; do     # each size's first mixture: two sizes that are one model share it
    IFS=: read -r size k seed arm <<<"${RUNS[$i]}"
    one=${DIRS[$i]:-error}
    [[ $k == "${K_LIST[0]}" && $seed == "${SEED_LIST[0]}" && $arm == mixture && $one != error* ]] || continue
    if [[ -n ${SIZE_OF[$one]:-} ]]; then
      echo "error: sizes '${SIZE_OF[$one]}' and '$size' are the same model (one run folder, $one); drop one" >&2
      exit 2
    fi
    SIZE_OF[$one]=$size
  done
fi

run_one() {   # size k seed arm slot index
  local size=$1 k=$2 seed=$3 arm=$4 slot=$5 index=$6
  local label="k${k}" dir rc
  [[ $arm != mixture ]] && label="k${k} $arm"
  run_args "$size" "$k" "$seed" "$arm"
  local args=("${RUN_ARGS[@]}")
  local where=""
  if [[ $N_GPUS -gt 1 ]]; then          # slots spread over the GPUs, from the list the user gave, if any
    local gpus
    IFS=, read -r -a gpus <<<"${VISIBLE_GPUS:-$(seq -s, 0 $((N_GPUS - 1)))}"
    export CUDA_VISIBLE_DEVICES=${gpus[$((slot % ${#gpus[@]}))]}
    where=" on GPU $CUDA_VISIBLE_DEVICES"
  fi
  dir=${DIRS[$index]:-}
  [[ -n $dir ]] || dir=$($PYTHON train.py "${args[@]}" --print_run_dir 2>&1) || dir="error: ${dir#error: }"
  if [[ $dir == error:* ]]; then
    say "$size $label s$seed: FAILED: $dir"; echo "$size $label s$seed" >>"$FAILED"; return 0
  fi
  local name=$(basename "$dir") log="$dir/train.log" skipped=0
  alive "$SWEEP_PID" || exit 143                    # the sweep is gone: start nothing new
  # a valid evaluation of this identity means a finished run: evaluate.py checks, in one start
  if [[ -f "$dir/eval.json" ]] && $PYTHON evaluate.py "$dir" --data_dir="$DATA" $EVAL_ARGS 2>&1 \
       | tee -a "$dir/train.log" | tail -n 1 | grep -q "already evaluated"; then
    say "$name: finished and evaluated, skipped"; return 0
  fi
  mkdir -p "$dir"
  [[ -f "$dir/ckpt.pt" && ! -f "$dir/done" ]] && say "$name: resuming"
  [[ ! -f "$dir/ckpt.pt" ]] && say "$name: training$where"
  # train.py and evaluate.py each return at once when their part is already done for this identity
  $PYTHON train.py "${args[@]}" >>"$log" 2>&1; rc=$?
  if [[ $rc -ne 0 ]]; then
    [[ $rc -eq 143 || $rc -eq 130 ]] && return $rc
    say "$name: training FAILED (exit $rc): $(tail -n 1 "$log")"
    echo "$name" >>"$FAILED"; return 0
  fi
  tail -n 1 "$log" | grep -q "already finished" && skipped=1
  alive "$SWEEP_PID" || exit 143
  $PYTHON evaluate.py "$dir" --data_dir="$DATA" $EVAL_ARGS >>"$log" 2>&1; rc=$?
  if [[ $rc -ne 0 ]]; then
    [[ $rc -eq 143 ]] && return $rc
    say "$name: evaluation FAILED: $(tail -n 1 "$log")"; echo "$name" >>"$FAILED"
  elif [[ $skipped == 1 ]] && tail -n 1 "$log" | grep -q "already evaluated"; then
    say "$name: finished and evaluated, skipped"
  else
    say "$(tail -n 1 "$log")"
  fi
}

for ((slot = 0; slot < PARALLEL; slot++)); do
  (
    trap 'exit 143' TERM
    for ((i = slot; i < ${#RUNS[@]}; i += PARALLEL)); do
      IFS=: read -r size k seed arm <<<"${RUNS[$i]}"
      run_one "$size" "$k" "$seed" "$arm" "$slot" "$i" || exit $?
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
