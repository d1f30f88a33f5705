#!/usr/bin/env bash
# Trials per second, side by side: 1,000 no-op trials through Optuna (in-process, and a
# subprocess per trial with in-memory and SQLite storage) and through `sweep run` (a program
# trial per child process, journal synced), in one run. See scripts/bench-overhead.py.
#
# Usage: scripts/bench-overhead.sh [--sweep target/release/sweep] [--trials N] [--parallel K] [--json FILE]
# Makes (once) a virtual environment with Optuna in ~/.cache/sweep/bench-venv.
set -euo pipefail
venv="$HOME/.cache/sweep/bench-venv"
if ! "$venv/bin/python" -c "import optuna" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check optuna
fi
exec "$venv/bin/python" "$(dirname "$0")/bench-overhead.py" "$@"
