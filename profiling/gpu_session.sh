#!/usr/bin/env bash
# Everything one GPU session should check, in one command that fits a 10-minute call on an H100:
# the GPU tests of the Triton and CuPy backends, then a quick benchmark grid, then the same grid
# for the CuPy FMA path (FUSED_RNN_CUPY_MMA=off) to compare with its tensor-core path. Logs, JSON
# records and markdown tables go to OUT (first argument, else $OUT, else profiling/results).
# Runs from the repository root without installing the package (PYTHONPATH), so it works on a
# machine without network access that has torch, triton, numpy, pytest (and cupy) installed.
set -uo pipefail
out=${1:-${OUT:-profiling/results}}
mkdir -p "$out" "$out/fma"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python}

{
    nvidia-smi
    $py -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    $py -c "import cupy; print('cupy', cupy.__version__)" || echo "cupy missing: the cupy backend will be skipped"
    git rev-parse HEAD 2>/dev/null
} > "$out/gpu-env.txt" 2>&1
cat "$out/gpu-env.txt"

if $py -c "import pytest" 2>/dev/null; then
    timeout 300 $py -m pytest -m gpu -q -rfEs -p no:cacheprovider tests/test_cupy.py tests/test_triton.py \
        > "$out/gpu-tests.txt" 2>&1
    echo "gpu tests: exit $?"; tail -n 30 "$out/gpu-tests.txt"
else
    echo "pytest is not installed here: GPU tests not run" | tee "$out/gpu-tests.txt"
fi

timeout 180 $py -m profiling --quick --no-progress --out "$out" > "$out/bench-quick.md" 2>&1
echo "bench: exit $?"; tail -n 40 "$out/bench-quick.md"
FUSED_RNN_CUPY_MMA=off timeout 90 $py -m profiling --quick --backends cupy --no-compile --no-progress \
    --out "$out/fma" > "$out/fma/bench-quick-fma.md" 2>&1
echo "bench (cupy FMA path): exit $?"; tail -n 20 "$out/fma/bench-quick-fma.md"
