#!/usr/bin/env bash
# The CUDA measurement of issue #24, in one run (no network; under 8 minutes on one H100/H200):
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh             # the measurement, on cuda
#   OUT=/some/dir bash benchmarks/gpu_check.sh --dry-run   # the same plumbing on the CPU, tiny sizes, in seconds
#
# 1. provenance (nvidia-smi, torch/CUDA/cuDNN versions), a CIFAR-100-format data set of random images and a
#    random-init resnet110 teacher (BatchNorm statistics from the data), all generated locally;
# 2. benchmarks/bench.py for KD, CKD (P+N 2 and 3), mixup, DIST, CRD and FitNet, each plain and with
#    --amp --channels_last;
# 3. train_student.py end to end, CKD, resnet32 <- resnet110, subset 2000, 5 pseudo-epochs, plain and fast path:
#    seconds per pseudo-epoch and the share of the time outside the training loop (benchmarks/gpu_report.py timed-run);
# 4. exact resume: a --deterministic CKD run SIGKILLed after its first last.pth and resumed, against an
#    uninterrupted one (results.json metrics and best.pth weights must be bit-identical); if that fails, once more
#    with CUBLAS_WORKSPACE_CONFIG=:4096:8;
# 5. 4 short CKD runs through scripts/sweep.py, one per GPU (--gpus 0) and four per GPU (--gpus 0,0,0,0);
# 6. the digits demo's kd, ckd and mixup students (subset 400, 3 seeds), plain and with --amp --channels_last:
#    the test accuracies that decide whether the fast path can be the CUDA default;
# 7. CKD P+N 2 with --compile (last: it may be slow or fail).
#
# Every step has its own timeout and the whole script a time budget (GPU_CHECK_BUDGET_S, default 450 s of steps):
# a failed, timed-out or skipped step is recorded and the script goes on. $OUT receives gpu_check.json,
# gpu_check.md and gpu_check_logs.tar.gz (every step's log); the bulky work files (data, runs) live in a
# temporary folder (GPU_CHECK_WORK to choose it, GPU_CHECK_KEEP_WORK=1 to keep it).
#
# Environment: OUT (default: ./gpu_check_out), PYTHON (default: .venv/bin/python if present, else python3),
# GPU_CHECK_DEVICE (default cuda; cpu runs the full sequence on the CPU), GPU_CHECK_TINY=1 (tiny models and
# sizes, as --dry-run uses), GPU_CHECK_BUDGET_S, GPU_CHECK_ONLY (a subset of "bench e2e determinism sweep digits
# compile" to rerun part of the measurement), GPU_CHECK_SWEEP_EPOCHS (pseudo-epochs of each concurrent run).
set -u

DRY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument '$arg'; use --dry-run or --help" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi
# the environment variables this script reads, checked by the project's registry (core/env.py) before anything is made
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m core.env PYTHON OUT GPU_CHECK_DEVICE GPU_CHECK_TINY GPU_CHECK_BUDGET_S \
    GPU_CHECK_ONLY GPU_CHECK_SWEEP_EPOCHS GPU_CHECK_WORK GPU_CHECK_KEEP_WORK || exit 2
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT" || { echo "error: cannot create OUT=$OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled WANDB_SILENT=true

if [ "$DRY" = 1 ]; then
    DEVICE=cpu; TINY=1; MODE=dry-run; BUDGET=${GPU_CHECK_BUDGET_S:-240}
else
    DEVICE=${GPU_CHECK_DEVICE:-cuda}; TINY=${GPU_CHECK_TINY:-0}; MODE=full; BUDGET=${GPU_CHECK_BUDGET_S:-450}
fi
if [ "$DEVICE" = cpu ]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi

if [ "$TINY" = 1 ]; then
    MODEL_S=resnet8; MODEL_T=resnet8; SUBSET=100; N_TRAIN=300; N_TEST=100; BATCH=16
    BENCH_SIZE=(--batch_size 16 --steps 2 --warmup 1 --repeats 1 --cache_repeats 1 --threads 1)
    CRD_K=32; SWEEP_EPOCHS=2; DET_EPOCHS=3; STEP_TIMEOUT=120
else
    MODEL_S=resnet32; MODEL_T=resnet110; SUBSET=2000; N_TRAIN=5000; N_TEST=10000; BATCH=64
    BENCH_SIZE=(--batch_size 64 --steps 10 --warmup 5 --repeats 9 --cache_repeats 1)
    CRD_K=16384; SWEEP_EPOCHS=20; DET_EPOCHS=12; STEP_TIMEOUT=90
fi
[ -n "${GPU_CHECK_SWEEP_EPOCHS:-}" ] && SWEEP_EPOCHS=$GPU_CHECK_SWEEP_EPOCHS
ONLY=" ${GPU_CHECK_ONLY:-bench e2e determinism sweep digits compile} "
wanted() { [[ "$ONLY" == *" $1 "* ]]; }
SWEEP_RUNS=4
[ "$DRY" = 1 ] && SWEEP_RUNS=1  # dry-run: one run per slot count, the plumbing only
FAST=(--amp --channels_last)
FAST_NAME=amp+channels_last

WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
rm -rf "$WORK/logs" "$WORK/runs" "$WORK/steps.jsonl" "$WORK/prepare.json" "$WORK/meta.json"
mkdir -p "$WORK/logs" "$WORK/runs"
DATA=$WORK/data
TEACHER=$WORK/teacher/models/${MODEL_T}_vanilla/ckpt_epoch_240.pth
STEPS=$WORK/steps.jsonl
START=$(date +%s)
STEP_NO=0

say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*"; }
json_str() { local s=$1; s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\t'/ }; s=${s//$'\n'/ }; printf '"%s"' "$s"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# record STEP NAME RC SECONDS LOG CMD [extra "key": value pairs, already JSON]
record() {
    local extra=${7:-}
    printf '{"step": %s, "name": %s, "rc": %s, "seconds": %s, "log": %s, "cmd": %s%s}\n' \
        "$(json_str "$1")" "$(json_str "$2")" "$3" "$4" "$(json_str "$5")" "$(json_str "$6")" "${extra:+, $extra}" >> "$STEPS"
}
skip() {  # skip STEP NAME REASON [extra]
    local extra=${4:-}
    printf '{"step": %s, "name": %s, "rc": null, "skipped": %s%s}\n' "$(json_str "$1")" "$(json_str "$2")" \
        "$(json_str "$3")" "${extra:+, $extra}" >> "$STEPS"
    say "skip $1 $2: $3"
}
# run_step STEP NAME MAX_TIMEOUT MIN_LEFT EXTRA_JSON -- COMMAND...: timed, logged to logs/STEP_NAME.log, recorded
run_step() {
    local step=$1 name=$2 max=$3 need=$4 extra=$5; shift 6
    local remaining; remaining=$(left)
    if [ "$remaining" -lt "$need" ]; then skip "$step" "$name" "time budget (${remaining}s left of ${BUDGET}s)" "$extra"; return 0; fi
    local limit=$max; [ "$remaining" -lt "$limit" ] && limit=$remaining
    STEP_NO=$((STEP_NO + 1))
    local log t0 t1 rc
    log=logs/$(printf %02d "$STEP_NO")_${step}_${name//+/_}.log
    say "$step $name (timeout ${limit}s): $*"
    t0=$(date +%s.%N)
    timeout -k 10 "$limit" "$@" > "$WORK/$log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    local secs; secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    record "$step" "$name" "$rc" "$secs" "$log" "$*" "\"timeout_s\": $limit${extra:+, $extra}"
    say "$step $name: exit $rc after ${secs}s"
    return 0
}

printf '{"mode": "%s", "device": "%s", "tiny": %s, "budget_s": %s, "fast_variant": "%s", "python": %s, "command": %s, "work": %s}\n' \
    "$MODE" "$DEVICE" "$TINY" "$BUDGET" "$FAST_NAME" "$(json_str "$PY")" "$(json_str "OUT=$OUT bash benchmarks/gpu_check.sh $*")" \
    "$(json_str "$WORK")" > "$WORK/meta.json"
say "mode $MODE, device $DEVICE, tiny $TINY, budget ${BUDGET}s, python $PY, work $WORK, out $OUT"

# ---------------------------------------------------------------------------------------------- 1. provenance, data, teacher
if command -v nvidia-smi > /dev/null 2>&1; then
    timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$WORK/logs/nvidia_smi.txt" 2>&1
else
    echo "nvidia-smi not found" > "$WORK/logs/nvidia_smi.txt"
fi
run_step prepare prepare 180 0 "" -- "$PY" benchmarks/gpu_report.py prepare --work "$WORK" --device "$DEVICE" \
    --model_t "$MODEL_T" --teacher "$TEACHER" --n_train "$N_TRAIN" --n_test "$N_TEST"
if [ ! -f "$TEACHER" ]; then
    say "prepare failed: no teacher, the training steps will fail (see logs/prepare_prepare.log)"
fi

# ---------------------------------------------------------------------------------------------- 2. bench
bench() {  # bench NAME LABEL VARIANT TIMEOUT FLAGS...
    local name=$1 label=$2 variant=$3 max=$4; shift 4
    local vflags=()
    case "$variant" in
        plain) ;;
        "$FAST_NAME") vflags=("${FAST[@]}") ;;
        compile) vflags=("${FAST[@]}" --compile) ;;
    esac
    local extra
    extra="\"label\": $(json_str "$label"), \"variant\": $(json_str "$variant"), \"flags\": $(json_str "$* ${vflags[*]}")"
    run_step bench "$name" "$max" 20 "$extra" -- "$PY" benchmarks/bench.py --device "$DEVICE" \
        --model_s "$MODEL_S" --model_t "$MODEL_T" --subset_size "$SUBSET" "${BENCH_SIZE[@]}" "$@" "${vflags[@]}"
}
METHODS=(
    "kd|KD (--relational=None --w_kd 1)|--relational=None --w_kd 1"
    "ckd2|CKD, P+N = 2|--relational ckd --pos_and_neg 2"
    "ckd3|CKD, P+N = 3|--relational ckd --pos_and_neg 3"
    "mixup|mixup|--relational mixup"
    "dist|DIST|--relational dist"
    "crd|CRD (--nce_k $CRD_K)|--relational crd --nce_k $CRD_K"
    "fitnet|FitNet (--distill hint)|--relational=None --distill hint"
)
for entry in "${METHODS[@]}"; do
    wanted bench || break
    IFS='|' read -r name label flags <<< "$entry"
    read -r -a flag_array <<< "$flags"
    for variant in plain "$FAST_NAME"; do
        if [ "$DRY" = 1 ] && ! { [ "$name" = ckd2 ] && [ "$variant" = "$FAST_NAME" ]; }; then
            skip bench "$name" "dry-run runs ckd2 $FAST_NAME only" \
                "\"label\": $(json_str "$label"), \"variant\": $(json_str "$variant"), \"flags\": $(json_str "$flags")"
            continue
        fi
        bench "$name" "$label" "$variant" "$STEP_TIMEOUT" "${flag_array[@]}"
    done
done

# ---------------------------------------------------------------------------------------------- 3. end to end
TRAIN_COMMON=(--model_s "$MODEL_S" --model_t "$MODEL_T" --path_t "$TEACHER" --relational ckd --subset_size "$SUBSET"
              --batch_size "$BATCH" --data_folder "$DATA" --device "$DEVICE" --seed 1)
for variant in plain "$FAST_NAME"; do
    wanted e2e || break
    if [ "$DRY" = 1 ] && [ "$variant" != plain ]; then
        skip e2e "$variant" "dry-run runs the plain variant only" "\"label\": $(json_str "ckd $variant")"
        continue
    fi
    vflags=(); [ "$variant" = plain ] || vflags=("${FAST[@]}")
    tag=${variant//+/_}
    run_step e2e "$tag" 180 30 "\"label\": $(json_str "ckd $variant"), \"flags\": $(json_str "${vflags[*]}"), \"timing\": \"runs/e2e_$tag.timing.json\"" \
        -- "$PY" benchmarks/gpu_report.py timed-run --timing "$WORK/runs/e2e_$tag.timing.json" -- "${TRAIN_COMMON[@]}" \
        --epochs 5 --save_dir "$WORK/runs/e2e_$tag" "${vflags[@]}"
done

# ---------------------------------------------------------------------------------------------- 4. deterministic resume
# det_check VARIANT ENV_ASSIGNMENT...: reference run and killed run side by side, then the resume of the killed one
det_check() {
    local variant=$1; shift
    local env_text="$*" remaining; remaining=$(left)
    local extra="\"variant\": $(json_str "$variant"), \"env\": $(json_str "$env_text")"
    if [ "$remaining" -lt 60 ]; then skip determinism reference "time budget (${remaining}s left)" "$extra"; return; fi
    local limit=240; [ "$remaining" -lt "$limit" ] && limit=$remaining
    local args=("${TRAIN_COMMON[@]}" --epochs "$DET_EPOCHS" --deterministic)
    local ref_dir=$WORK/runs/det_${variant}_ref kill_dir=$WORK/runs/det_${variant}_kill
    rm -rf "$ref_dir" "$kill_dir"
    say "determinism $variant: reference run in the background"
    local t0; t0=$(date +%s.%N)
    env "$@" timeout -k 10 "$limit" "$PY" train_student.py "${args[@]}" --save_dir "$ref_dir" \
        > "$WORK/logs/det_${variant}_reference.log" 2>&1 &
    local ref_pid=$!
    say "determinism $variant: run to be killed after its first last.pth"
    local k0; k0=$(date +%s.%N)
    env "$@" "$PY" train_student.py "${args[@]}" --save_dir "$kill_dir" > "$WORK/logs/det_${variant}_killed.log" 2>&1 &
    local kill_pid=$! seen=false killed=false deadline=$(( $(date +%s) + limit ))
    while kill -0 "$kill_pid" 2> /dev/null; do
        if compgen -G "$kill_dir/student/*/last.pth" > /dev/null; then
            kill -9 "$kill_pid" 2> /dev/null && killed=true
            seen=true
            break
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then kill -9 "$kill_pid" 2> /dev/null; break; fi
        sleep 0.05
    done
    wait "$kill_pid" 2> /dev/null
    local krc=$?
    local k1; k1=$(date +%s.%N)
    local ksecs; ksecs=$(awk -v a="$k0" -v b="$k1" 'BEGIN { printf "%.2f", b - a }')
    local finished=false; compgen -G "$kill_dir/student/*/results.json" > /dev/null && finished=true
    record determinism killed "$krc" "$ksecs" "logs/det_${variant}_killed.log" "env $env_text $PY train_student.py ${args[*]} --save_dir $kill_dir (SIGKILL)" \
        "$extra, \"expected_rc\": 137, \"killed\": $killed, \"killed_after_s\": $ksecs, \"last_pth_seen\": $seen, \"finished_before_kill\": $finished"
    say "determinism $variant: killed=$killed after ${ksecs}s (last.pth seen: $seen, finished before: $finished); resuming"
    run_step determinism resumed "$limit" 0 "$extra" -- env "$@" "$PY" train_student.py "${args[@]}" --save_dir "$kill_dir"
    wait "$ref_pid"
    local rrc=$?
    local t1; t1=$(date +%s.%N)
    record determinism reference "$rrc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')" \
        "logs/det_${variant}_reference.log" "env $env_text $PY train_student.py ${args[*]} --save_dir $ref_dir" "$extra"
    say "determinism $variant: reference exit $rrc"
}
det_identical() {  # true when the variant's resumed results equal the reference's (quick check for the fallback)
    local variant=$1
    "$PY" - "$WORK/runs/det_${variant}_ref" "$WORK/runs/det_${variant}_kill" <<'EOF' > /dev/null 2>&1
import json, sys
from pathlib import Path
from benchmarks.gpu_report import RESUME_METRICS
a, b = (json.loads(next(Path(d).glob("student/*/results.json")).read_text()) for d in sys.argv[1:3])
sys.exit(0 if all(a.get(k) == b.get(k) for k in RESUME_METRICS) else 1)
EOF
}
wanted determinism && det_check default
if wanted determinism && [ "$DEVICE" != cpu ] && ! det_identical default; then
    det_check cublas_workspace CUBLAS_WORKSPACE_CONFIG=:4096:8
fi

# ---------------------------------------------------------------------------------------------- 5. concurrent runs
SWEEP_FILE=$WORK/gpu_check_sweep.yml
{
    echo "# written by benchmarks/gpu_check.sh: $SWEEP_RUNS short CKD runs"
    echo "program: train_student.py"
    echo "method: grid"
    echo "parameters:"
    echo "  relational: {value: ckd}"
    echo "  model_s: {value: $MODEL_S}"
    echo "  model_t: {value: $MODEL_T}"
    echo "  subset_size: {value: $SUBSET}"
    echo "  epochs: {value: $SWEEP_EPOCHS}"
    echo "  seed: {values: [$(seq -s ', ' 1 "$SWEEP_RUNS")]}"
} > "$SWEEP_FILE"
SWEEP_EXTRA=(--path_t "$TEACHER" --data_folder "$DATA" --batch_size "$BATCH")
[ "$DEVICE" = cpu ] && SWEEP_EXTRA+=(--device cpu)
for slots in 1 4; do
    wanted sweep || break
    gpus=$(printf '0,%.0s' $(seq 1 "$slots")); gpus=${gpus%,}
    if [ "$DRY" = 1 ] && [ "$slots" = 4 ]; then
        skip sweep "slots$slots" "dry-run runs one slot only" "\"slots\": $slots, \"runs\": $SWEEP_RUNS"
        continue
    fi
    run_step sweep "slots$slots" 200 40 "\"slots\": $slots, \"runs\": $SWEEP_RUNS, \"gpus\": \"$gpus\"" -- \
        "$PY" scripts/sweep.py "$SWEEP_FILE" --gpus "$gpus" --save_dir "$WORK/runs/sweep_$slots" -- "${SWEEP_EXTRA[@]}"
done

# ---------------------------------------------------------------------------------------------- 6. digits accuracy
if ! wanted digits; then
    :
elif [ "$DRY" = 1 ]; then
    run_step digits accuracy 120 0 "" -- "$PY" benchmarks/gpu_report.py digits-accuracy --work "$WORK" --device "$DEVICE" \
        --result "$WORK/runs/digits_accuracy.json" --seeds 1 --teacher_epochs 1 --student_epochs 1 --methods ckd
else
    run_step digits accuracy 150 60 "" -- "$PY" benchmarks/gpu_report.py digits-accuracy --work "$WORK" --device "$DEVICE" \
        --result "$WORK/runs/digits_accuracy.json"
fi

# ---------------------------------------------------------------------------------------------- 7. compile
if ! wanted compile; then
    :
elif [ "$DRY" = 1 ]; then
    skip bench ckd2 "dry-run skips --compile" "\"label\": \"CKD, P+N = 2\", \"variant\": \"compile\", \"flags\": \"--relational ckd --pos_and_neg 2 --amp --channels_last --compile\""
else
    bench ckd2 "CKD, P+N = 2" compile 200 --relational ckd --pos_and_neg 2
fi

# ---------------------------------------------------------------------------------------------- report
TOTAL=$(( $(date +%s) - START ))
"$PY" - "$WORK/meta.json" "$TOTAL" <<'EOF'
import json, sys
meta = json.load(open(sys.argv[1])); meta["total_s"] = int(sys.argv[2]); json.dump(meta, open(sys.argv[1], "w"))
EOF
timeout 120 "$PY" benchmarks/gpu_report.py report --work "$WORK" --out "$OUT" > "$WORK/logs/report.log" 2>&1
report_rc=$?
cat "$WORK/logs/report.log"
tar -czf "$OUT/gpu_check_logs.tar.gz" -C "$WORK" logs steps.jsonl meta.json $(cd "$WORK" && ls prepare.json gpu_check_sweep.yml 2> /dev/null) \
    $(cd "$WORK" && ls runs/*.timing.json runs/digits_accuracy.json 2> /dev/null) 2> /dev/null
say "done in $(( $(date +%s) - START ))s: $OUT/gpu_check.json, $OUT/gpu_check.md, $OUT/gpu_check_logs.tar.gz (report exit $report_rc)"
if [ "${GPU_CHECK_KEEP_WORK:-0}" != 1 ] && [ -z "${GPU_CHECK_WORK:-}" ]; then rm -rf "$WORK"; fi
exit "$report_rc"
