#!/bin/sh
# Builds the fuzz targets on the stable toolchain and runs each for SECONDS (default 180).
#   fuzz/run.sh [SECONDS] [TARGET...]     targets: fuzz_spec fuzz_data
# Crashes are written to fuzz/artifacts/TARGET/; the corpus grows in fuzz/corpus/TARGET/ and is
# seeded from the checker's fixture corpus (tests/fixtures/check). With a nightly toolchain and
# cargo-fuzz, `cargo fuzz run fuzz_spec` works as well (it rebuilds every dependency).
set -eu
cd "$(dirname "$0")"
seconds="${1:-180}"
[ $# -gt 0 ] && shift
targets="${*:-fuzz_spec fuzz_data}"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
RUSTC_WRAPPER="$PWD/rustc-sancov.sh" cargo build --release --bins
for t in $targets; do
    case "$t" in
    fuzz_spec) seeds="../tests/fixtures/check/spec ../sweeps" dict=spec.dict ;;
    *) seeds="../tests/fixtures/check/data ../tests/fixtures/check/data/good" dict=data.dict ;;
    esac
    mkdir -p "corpus/$t" "artifacts/$t"
    # shellcheck disable=SC2086
    "$target_dir/release/$t" "corpus/$t" $seeds \
        -artifact_prefix="artifacts/$t/" -max_total_time="$seconds" -dict="$dict" \
        -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
        tee "artifacts/$t.log" | grep -E "^(#[0-9]+ +DONE|stat::|==|SUMMARY|artifact_prefix|Test unit written)" || true
done
