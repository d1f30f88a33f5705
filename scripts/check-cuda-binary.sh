#!/usr/bin/env bash
# The CUDA build where there is no NVIDIA driver and no CUDA library: it must start, check, plan,
# run the quickstart on the CPU and a sweep through Slurm, and a CUDA trial must fail at its start
# naming what is missing. `.ci/run` runs it on the binary scripts/build-cuda.sh made.
#
#   scripts/check-cuda-binary.sh BINARY     # e.g. ~/.cache/sweep/target-cuda/release/sweep
#
# Every command runs with an empty LD_LIBRARY_PATH. The Slurm part needs the one-node cluster of
# scripts/slurm-up.sh (skipped without one, a failure with SWEEP_REQUIRE_SLURM=1). The CUDA trial
# gets its one GPU from a stand-in nvidia-smi (this machine has none): the plan accepts
# `devices: [0]`, and the trial itself must find that there is no driver to open it with.
# Prints one line per check, then `cuda-binary: N passed, N failed`; exits non-zero on any failure.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -eq 1 ] && [ -x "$1" ] || { sed -n '2,6p' "$0" >&2; exit 2; }
bin="$(readlink -f "$1")"
work="$(mktemp -d "${TMPDIR:-/tmp}/sweep-cuda-binary.XXXXXX")"
cd "$root"
passed=0
failed=0

# `check NAME COMMAND...`: a check passes when COMMAND exits 0; its output goes to $work/NAME.log.
check() {
    local name="$1"
    shift
    if "$@" >"$work/$name.log" 2>&1; then
        echo "ok      $name"
        passed=$((passed + 1))
    else
        echo "FAILED  $name (exit $?); its output:"
        sed 's/^/    /' "$work/$name.log" | tail -n 30
        failed=$((failed + 1))
    fi
}

# The binary, with no library path at all.
sweep() { env LD_LIBRARY_PATH= "$bin" "$@"; }

no_cuda_library_needed() {
    readelf -d "$bin" | grep NEEDED
    ! readelf -d "$bin" | grep NEEDED | grep -Eq 'libcuda|libcublas|libcurand|libnvrtc|libcudart'
}

is_a_cuda_build() { sweep --version && sweep --version | grep -q 'CUDA'; }

# `finished_trials DIR N`: DIR/results.csv has N rows, all finished.
finished_trials() {
    local csv="$1/results.csv" want="$2"
    cat "$csv" || return 1
    local rows done
    rows=$(($(wc -l <"$csv") - 1))
    done=$(grep -c ',finished,' "$csv")
    [ "$rows" -eq "$want" ] && [ "$done" -eq "$want" ]
}

quickstart() {
    sweep run sweeps/quickstart.yaml --out "$work/quickstart" --quiet &&
        finished_trials "$work/quickstart" 16
}

slurm_sweep() {
    if ! sinfo -h -o %T >/dev/null 2>&1; then
        [ "${SWEEP_REQUIRE_SLURM:-}" = 1 ] && { echo "no Slurm cluster answers"; return 1; }
        echo "skipped: no Slurm cluster answers (scripts/slurm-up.sh starts one)"
        return 0
    fi
    cat >"$work/slurm.yaml" <<EOF
name: cuda-binary-slurm
data: {train: $root/data/clinc150-mini/train.json, dev: $root/data/clinc150-mini/dev.json}
model: {path: $root/models/tiny-base}
output: $work/slurm
seed: 3
parameters:
  method: {value: sft}
  learning_rate: {values: [3.0e-3, 1.0e-2]}
  epochs: {value: 1}
  batch_size: {value: 8}
  max_seq_len: {value: 96}
resources: {executor: slurm, devices: cpu, parallel: 2}
EOF
    sweep run "$work/slurm.yaml" --quiet && finished_trials "$work/slurm" 2 &&
        grep -q '"job":' "$work/slurm/journal.jsonl"
}

cuda_trial_names_the_missing_driver() {
    mkdir -p "$work/fake-gpu"
    # One 80 GB GPU, as `nvidia-smi --query-gpu=index,name,memory.total,memory.free` prints it.
    printf '#!/bin/sh\necho "0, Stand-in GPU, 81559, 81000"\n' >"$work/fake-gpu/nvidia-smi"
    chmod +x "$work/fake-gpu/nvidia-smi"
    cat >"$work/gpu.yaml" <<EOF
name: cuda-binary-gpu
data: {train: $root/data/clinc150-mini/train.json, dev: $root/data/clinc150-mini/dev.json}
model: {path: $root/models/tiny-base}
output: $work/gpu
parameters:
  method: {value: sft}
  epochs: {value: 1}
  max_seq_len: {value: 96}
resources: {devices: [0]}
EOF
    local status=0
    PATH="$work/fake-gpu:$PATH" sweep run "$work/gpu.yaml" --quiet || status=$?
    echo "sweep run exited $status"
    cat "$work/gpu/results.csv"
    # No trial finished (exit 1), and the reason names the driver and what to do.
    [ "$status" -eq 1 ] &&
        grep -q 'the NVIDIA driver (libcuda.so.1) is not found' "$work/gpu/results.csv" &&
        grep -q 'resources.devices: cpu' "$work/gpu/results.csv"
}

check no-cuda-library-needed no_cuda_library_needed
check version is_a_cuda_build
check check sweep check sweeps/quickstart.yaml
check plan sweep plan sweeps/quickstart.yaml
check quickstart-on-cpu quickstart
check slurm-sweep slurm_sweep
check cuda-trial-names-missing-driver cuda_trial_names_the_missing_driver

echo "cuda-binary: $passed passed, $failed failed (logs in $work)"
[ "$failed" -eq 0 ]
