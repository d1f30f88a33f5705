#!/usr/bin/env bash
# Build sweep with `--features cuda`, also on a machine with no GPU, no driver and no system CUDA.
#
#   scripts/build-cuda.sh                 # release build: prints the binary's path at the end
#   CUDA_COMPUTE_CAP=80 scripts/build-cuda.sh     # for an A100 (default 90: H100/H200, sm_90a)
#   scripts/build-cuda.sh --env           # only set up the toolkit; print the variables it uses
#   scripts/build-cuda.sh -- --example train_speed   # extra arguments go to `cargo build`
#
# Why this script: candle's `cuda` feature needs nvcc (its kernels are compiled to PTX at build
# time) and the CUDA headers. A real toolkit (nvcc on PATH, or /usr/local/cuda) is used when there
# is one. Otherwise the pinned CUDA 13.0 wheels from PyPI (the versions below; 13.0 matches a
# driver-580 GPU host) are installed with pip into a cache folder, SWEEP_CUDA_CACHE (default
# ~/.cache/sweep/cuda13), which then is a toolkit: nvidia/cu13/{bin,include,lib,nvvm}.
#
# Nothing is linked against a CUDA library: cudarc opens libcuda, cuBLAS, cuBLASLt, cuRAND and
# NVRTC when a trial first uses CUDA (vendor/candle-core/PATCH.md), so the binary starts, checks,
# plans and trains on the CPU on any machine, driver or not, and a CUDA trial on a machine that
# lacks one of them fails at its start naming it.
#
# The build goes to its own target folder, SWEEP_CUDA_TARGET_DIR (default
# ~/.cache/sweep/target-cuda), so it never evicts the CPU build's artifacts: a clean build takes
# about 22 minutes on 2 cores, a rebuild after a change in sweep's own code a minute or two.
# Running it again when nothing changed costs seconds (pip is skipped once its stamp exists).
#
# To run CUDA trials, the libraries must be found at run time: on a GPU host with a driver and the
# same wheels (e.g. inside PyTorch's site-packages), scripts/gpu-check.sh finds them; by hand:
#   LD_LIBRARY_PATH=$SWEEP_CUDA_CACHE/nvidia/cu13/lib ./sweep ...
set -euo pipefail
cd "$(dirname "$0")/.."

# CUDA 13.0 (update 2) wheels. Changing a pin changes the stamp, so the next run reinstalls.
PINS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.1.0.3
    nvidia-curand==10.4.0.35
)

env_only=false
cargo_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --env) env_only=true ;;
        --) shift; cargo_args+=("$@"); break ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "build-cuda.sh: unknown argument \`$1\` (try --help)" >&2; exit 2 ;;
    esac
    shift
done

cache="${SWEEP_CUDA_CACHE:-$HOME/.cache/sweep/cuda13}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
case "$CUDA_COMPUTE_CAP" in
    [0-9][0-9]|[0-9][0-9][0-9]) ;;
    *) echo "build-cuda.sh: CUDA_COMPUTE_CAP must be digits like 80, 89, 90 or 100, got \`$CUDA_COMPUTE_CAP\`" >&2; exit 2 ;;
esac

# A real toolkit: an explicit CUDA_HOME with nvcc, nvcc on PATH, or /usr/local/cuda.
toolkit=""
if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
    toolkit="$CUDA_HOME"
elif command -v nvcc >/dev/null 2>&1; then
    toolkit="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
elif [ -x /usr/local/cuda/bin/nvcc ]; then
    toolkit=/usr/local/cuda
fi

if [ -n "$toolkit" ]; then
    echo "build-cuda.sh: using the CUDA toolkit at $toolkit" >&2
    export CUDA_HOME="$toolkit"
else
    export CUDA_HOME="$cache/nvidia/cu13"
    stamp="$cache/.installed-$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-16)"
    if [ ! -e "$stamp" ]; then
        echo "build-cuda.sh: no CUDA toolkit here; installing the CUDA 13.0 wheels into $cache" >&2
        command -v python3 >/dev/null || { echo "build-cuda.sh: needs python3 with pip (or a CUDA toolkit)" >&2; exit 2; }
        rm -rf "$cache"
        mkdir -p "$cache"
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$cache" "${PINS[@]}"
        touch "$stamp"
    fi
fi

# cudarc wants the toolkit version as 13000 for 13.0; ask nvcc rather than guess.
if [ -z "${CUDARC_CUDA_VERSION:-}" ]; then
    release=$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -n1)
    [ -n "$release" ] || { echo "build-cuda.sh: cannot read the version of $CUDA_HOME/bin/nvcc" >&2; exit 1; }
    read -r major minor <<<"$release"
    export CUDARC_CUDA_VERSION=$((major * 1000 + minor * 10))
fi
export PATH="$CUDA_HOME/bin:$PATH"
export CARGO_TARGET_DIR="${SWEEP_CUDA_TARGET_DIR:-$HOME/.cache/sweep/target-cuda}"

if $env_only; then
    echo "CUDA_HOME=$CUDA_HOME"
    echo "CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION"
    echo "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
    echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
    exit 0
fi

cargo build --release --features cuda ${cargo_args[@]+"${cargo_args[@]}"}
echo "build-cuda.sh: built $CARGO_TARGET_DIR/release/sweep (sm_$CUDA_COMPUTE_CAP, CUDA $CUDARC_CUDA_VERSION)" >&2
