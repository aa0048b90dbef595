#!/usr/bin/env bash
# The GPU checks of issue 16, one command, under 9 minutes on one H100:
#   1. the device tests on CUDA (tests/spaces/test_spaces_devices.py, test_spaces_gpu_path.py on CUDA tensors,
#      and the Triton kernels' own tests);
#   2. benchmarks/cells.py --device cuda against cuDNN's LSTM at hidden 256 and 1024 (batch 32, bptt 35), and
#      the H-LSTM / F-LSTM shapes whose forward once aborted the sm_90 compile;
#   3. benchmarks/launches.py --device cuda: launches per window, counted by the CUDA profiler too;
#   4. 1, 2 and 4 packed trials on the one GPU (separate processes, as Ray's 0.25-GPU trials), aggregate tokens/s.
# Every step runs (a failing one does not stop the others) with its own time limit (510 s in all at most);
# each writes its log
# (and JSON) under $OUT when set (the device tool returns what is written there), else under
# benchmarks/results/gpu_check_<UTC time>/; the last lines printed are one status line per step.
#
#   bash benchmarks/gpu_check.sh            # PYTHON=/path/to/python to choose the interpreter
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/benchmarks/results/gpu_check_$(date -u +%Y%m%dT%H%M%SZ)}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
cd "$ROOT"

# Import squeezelstm from this checkout, installed or not: the four code folders as the namespace package.
SHIM=$(mktemp -d)
mkdir -p "$SHIM/squeezelstm"
for pkg in search spaces trainers dashboards; do ln -s "$ROOT/$pkg" "$SHIM/squeezelstm/$pkg"; done
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
trap 'rm -rf "$SHIM"' EXIT

STATUS=()
step() {  # step NAME SECONDS COMMAND...: run it with a time limit, log under $OUT, keep going whatever happens
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS rc=0
    echo "== $name (limit ${limit}s): $*"
    ( set -euo pipefail; timeout --kill-after=10 "$limit" "$@" ) >"$OUT/$name.log" 2>&1 || rc=$?
    tail -n 40 "$OUT/$name.log"
    local verdict=ok
    [ "$rc" -eq 0 ] || verdict="FAILED rc=$rc"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && verdict="TIMED OUT after ${limit}s"
    STATUS+=("$name: $verdict ($((SECONDS - t0)) s)")
}

step environment 30 bash -c "nvidia-smi; $PY -c 'import torch, sys; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available()); print(torch.cuda.get_device_name(0)); import triton; print(\"triton\", triton.__version__)'"
# 1. correctness on CUDA (TF32 off inside the tests); the Triton test modules run their CUDA cases here.
#    SQUEEZELSTM_KERNELS=0: no minute spent building the CPU compiled loops, which no GPU check uses.
step device_tests 180 env SQUEEZELSTM_KERNELS=0 "$PY" -m pytest -q -p no:cacheprovider tests/spaces/test_spaces_devices.py \
    tests/spaces/test_spaces_gpu_path.py $(ls tests/spaces/test_spaces_triton_*.py 2>/dev/null)
# 2. speed against cuDNN (ratio > 1: faster than cuDNN's LSTM of the same hidden size)
step cells_cuda 100 "$PY" benchmarks/cells.py --device cuda --hidden 256 1024 --batch 32 --bptt 35 --rounds 5 \
    --min-time 0.1 --threads 2 --json "$OUT/cells_cuda.json"
# 2b. the shapes whose float32 forward once aborted the process compiling for sm_90 (spaces/README.md):
#     H-LSTM gate width 32 at hidden 128, 256 (and 1024), F-LSTM rank 64 at hidden 1024 (its Triton path)
step sm90_abort_shapes 40 "$PY" benchmarks/cells.py --device cuda --hidden 128 256 1024 --batch 32 --bptt 35 \
    --rounds 1 --min-time 0.02 --threads 2 --only hidden_32 factorized_64 --json "$OUT/sm90_abort_shapes.json"
# 3. launches per forward+backward window, aten + Triton and the CUDA profiler's device-side count
step launches_cuda 50 "$PY" benchmarks/launches.py --device cuda --quiet --json "$OUT/launches_cuda.json"
# 4. packed trials: 1, 2 and 4 processes on the one GPU (lstm and grouped, hidden 256)
step packed_trials 110 "$PY" benchmarks/cells.py --device cuda --hidden 256 --batch 32 --bptt 35 --rounds 1 \
    --min-time 0.05 --only lstm --threads 2 --pack 1 2 4 --pack-hidden 256 --pack-seconds 5 \
    --json "$OUT/packed_trials.json"

echo
echo "gpu_check: results in $OUT"
printf '%s\n' "${STATUS[@]}" | tee "$OUT/status.txt"
