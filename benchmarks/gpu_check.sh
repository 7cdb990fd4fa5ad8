#!/usr/bin/env bash
# The GPU checks of the Triton backend (issue 8), as one prepared script for the day a GPU is lent.
#
#   bash benchmarks/gpu_check.sh          # from the repository root; results in out/gpu-check/ (ignored)
#   bash benchmarks/gpu_check.sh tests      # only the tests (or: bench, only the benchmark)
#   OUT=/some/dir PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#   PYTEST_ARGS="-n 8" TESTS_TIMEOUT=200 BENCH_TIMEOUT=200 bash benchmarks/gpu_check.sh   # a tighter lease
#
# 1. tests/test_triton.py compiled for the GPU (TRITON_INTERPRET=0: no interpreter) on CUDA tensors,
#    against the rule as written on the same tensors, and a capturable step replayed in a CUDA graph;
#    tests/test_cuda.py: every optimizer and variation on the GPU against the CPU, NCCL sharding;
# 2. benchmarks/step_speed.py --device cuda: 25 M fp32 parameters in 10 and ~200 tensors, torch's fused
#    and foreach AdamW interleaved, the HBM bandwidth (x.mul_), peak memory, the cold first step
#    (Triton compile included), host syncs per step, and steps replayed from CUDA graphs;
# 3. benchmarks/eightbit_speed.py --device cuda: 8-bit AdamW (its kernel reads and writes the codes)
#    against fp32 AdamW on the Triton path and torch's fused AdamW, 25 M parameters, interleaved.
# Each part has a time limit (tests 330 s, benchmarks 240 + 90 s by default; where one command may run
# 10 minutes, run `tests` and `bench` as two commands), so a hang costs minutes, not the machine; a
# failing test does not stop the benchmark. The exit status is the tests' (0: all
# passed; 2: no CUDA device here).
set -u
PART=${1:-all}
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-check}
PYTHON=${PYTHON:-python}
TESTS_TIMEOUT=${TESTS_TIMEOUT:-330}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-240}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}

"$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu_check.sh: no CUDA device here (torch.cuda.is_available() is False)" >&2; exit 2; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
"$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
      'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/gpu.txt"

tests=0
if [ "$PART" != bench ]; then
    echo "== tests/test_triton.py and tests/test_cuda.py on the GPU"
    TRITON_INTERPRET=0 timeout "$TESTS_TIMEOUT" "$PYTHON" -m pytest tests/test_triton.py tests/test_cuda.py -q -p no:cacheprovider -rs \
        --durations=5 ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/tests.txt"
    tests=${PIPESTATUS[0]}
fi
if [ "$PART" != tests ]; then
    echo "== benchmarks/step_speed.py --device cuda"
    timeout "$BENCH_TIMEOUT" "$PYTHON" benchmarks/step_speed.py --device cuda --reps 30 --json "$OUT/step_speed.json" \
        2>&1 | tee "$OUT/step_speed.txt"
    echo "== benchmarks/eightbit_speed.py --device cuda"
    timeout 90 "$PYTHON" benchmarks/eightbit_speed.py --device cuda 2>&1 | tee "$OUT/eightbit_speed.txt"
fi

echo "tests exit status: $tests (results in $OUT/)"
exit "$tests"
