#!/bin/sh
# RUSTC_WRAPPER for fuzz/run.sh: adds libFuzzer's coverage instrumentation (what cargo-fuzz puts in
# RUSTFLAGS) to sweep and the fuzz targets only. Why: RUSTFLAGS would change every dependency's
# build, so candle and polars would be rebuilt instrumented (20+ minutes on two cores) although
# the checkers never call them; this way they are reused from the ordinary release build.
rustc="$1"
shift
case " $* " in
*" --crate-name sweep "* | *" --crate-name fuzz_spec "* | *" --crate-name fuzz_data "*)
    exec "$rustc" "$@" --cfg fuzzing \
        -Cpasses=sancov-module \
        -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares
    ;;
esac
exec "$rustc" "$@"
