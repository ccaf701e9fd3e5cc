#!/usr/bin/env bash
# Install isquant-tvm into ./.venv with everything the tests and the aarch64 cross-build need.
# Idempotent: re-runs only fill in what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing the aarch64 cross compiler (gcc-aarch64-linux-gnu libc6-dev-arm64-cross)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
            binutils-aarch64-linux-gnu file >/dev/null
    else
        echo "setup: aarch64-linux-gnu-gcc missing; run: sudo apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross" >&2
    fi
fi

# scripts/bench_arm.py's cycle model: llvm-mca with a Neoverse-N1 (Cortex-A76) model, LLVM >= 16 (Debian: llvm-19)
if [ ! -x /usr/lib/llvm-19/bin/llvm-mca ] && ! command -v llvm-mca-19 >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing llvm-19 (llvm-mca for scripts/bench_arm.py)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends llvm-19 >/dev/null \
            || echo "setup: llvm-19 not available (apt-cache policy llvm-19); bench_arm.py needs an llvm-mca" >&2
    else
        echo "setup: llvm-mca-19 missing (scripts/bench_arm.py); run: sudo apt-get install llvm-19" >&2
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch==2.13.0 (CPU) is pinned in the extras: a looser spec pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -c "import tvm, tvm_ffi; print('setup: apache-tvm', tvm.__version__, '| apache-tvm-ffi', tvm_ffi.__version__)"
