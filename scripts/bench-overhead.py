#!/usr/bin/env python3
"""Per-trial overhead, side by side: N no-op trials through Optuna and through sweep, in one run.

Runners (each N trials, one at a time unless --parallel, random search over one float `x`):
  1. a bare loop starting the no-op program N times (no sampler, no storage): the floor;
  2. Optuna in-process: the objective is a Python function (no process per trial);
  3. Optuna driving a subprocess per trial (as people do for isolation), in-memory storage;
  4. the same with SQLite storage (each trial committed to disk, like sweep's synced journal);
  5. `sweep run` on a generated W&B-style sweep file (`program`, `command`, method random,
     run_cap N): a child process per trial, every journal line synced. Needs a sweep binary
     that runs programs; skipped, saying why, when `sweep check` refuses the file.

The no-op program prints one report line, `{"accuracy": ...}`, and exits. Every runner starts
it with the same interpreter (this script's, by absolute path: no PATH lookup, no pyenv shim),
so the comparison is of the machinery around the process, not of Python's start-up.

Optuna's samplers are RandomSampler (seeded): TPE over 1000 trials would measure the sampler,
not the overhead. Prints trials per second for each runner; --json FILE writes them too.

Usage: scripts/bench-overhead.sh [--sweep target/release/sweep [--sweep OTHER_BUILD]] [--trials 1000] [--parallel 1] [--rounds R]
       (the .sh makes a venv with Optuna in ~/.cache/sweep/bench-venv and runs this file)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

NOOP = """import json, sys
x = 0.5
for arg in sys.argv[1:]:
    if arg.startswith("--x="):
        x = float(arg[4:])
print(json.dumps({"accuracy": 1.0 - (x - 0.3) ** 2}), flush=True)
"""


def metric_of(stdout):
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)["accuracy"]
    raise RuntimeError(f"no report line in {stdout!r}")


def run_noop(noop, x):
    done = subprocess.run([sys.executable, noop, f"--x={x}"], capture_output=True, text=True, check=True)
    return metric_of(done.stdout)


def bare_loop(noop, trials, parallel):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda i: run_noop(noop, (i % 100) / 100), range(trials)))


def optuna_study(storage=None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0), storage=storage)


def optuna_in_process(trials, parallel):
    study = optuna_study()
    study.optimize(lambda t: 1.0 - (t.suggest_float("x", 0.0, 1.0) - 0.3) ** 2, n_trials=trials, n_jobs=parallel)


def optuna_subprocess(noop, trials, parallel, storage=None):
    study = optuna_study(storage)
    study.optimize(lambda t: run_noop(noop, t.suggest_float("x", 0.0, 1.0)), n_trials=trials, n_jobs=parallel)


def sweep_file(work, noop, trials, parallel):
    path = os.path.join(work, "bench-overhead.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(
            "name: bench-overhead\n"
            f"program: {json.dumps(noop)}\n"
            f"command: [{json.dumps(sys.executable)}, '${{program}}', '${{args}}']\n"
            "method: random\n"
            f"run_cap: {trials}\n"
            "metric: {name: accuracy, goal: maximize}\n"
            "parameters:\n"
            "  x: {distribution: uniform, min: 0.0, max: 1.0}\n"
            f"output: {json.dumps(os.path.join(work, 'results'))}\n"
            f"resources: {{parallel: {parallel}}}\n"
        )
    return path


def sweep_run(sweep, work, noop, trials, parallel):
    """Seconds for `sweep run`, or the reason it was skipped."""
    spec = sweep_file(work, noop, trials, parallel)
    check = subprocess.run([sweep, "check", spec], capture_output=True, text=True)
    if check.returncode != 0:
        said = (check.stdout + check.stderr).strip().splitlines()[:3]
        return None, "`sweep check` refuses the program sweep file (programs not wired in yet?): " + " | ".join(said)
    log = os.path.join(work, "sweep-run.log")
    with open(log, "w") as out:
        start = time.perf_counter()
        done = subprocess.run([sweep, "run", spec], stdout=out, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        return None, f"`sweep run` exited with {done.returncode}; see {log}"
    journal = os.path.join(work, "results", "journal.jsonl")
    finished = 0
    if os.path.exists(journal):
        with open(journal, encoding="utf-8") as f:
            finished = sum('"trial_finished"' in line for line in f)
    if finished != trials:
        return seconds, f"journal has {finished} finished trials, not {trials}"
    return seconds, None


def sweep_label(binaries, i):
    """How a sweep binary is named in the table: 'journal synced', or its path when there are two."""
    return "journal synced" if len(binaries) == 1 else binaries[i]


def timed(f):
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--parallel", type=int, default=1, help="trials at a time (Optuna n_jobs, sweep resources.parallel)")
    p.add_argument("--sweep", action="append", default=[],
                   help="the sweep binary to time (omit to skip); give it twice to compare two builds "
                        "(before and after a change) in the same interleaved rounds")
    p.add_argument("--no-sqlite", action="store_true", help="skip Optuna with SQLite storage")
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("--rounds", type=int, default=1,
                   help="more than 1: the floor, Optuna's subprocess loop and sweep interleaved this many "
                        "times (the machine's noise moves each by 10 %% between runs), then their medians")
    args = p.parse_args()
    try:
        import optuna
    except ImportError:
        sys.exit("needs optuna: run scripts/bench-overhead.sh, which makes a venv with it")

    work = tempfile.mkdtemp(prefix="bench-overhead-")
    noop = os.path.join(work, "noop_program.py")
    with open(noop, "w", encoding="utf-8") as f:
        f.write(NOOP)
    n, k = args.trials, args.parallel
    print(f"{n} no-op trials each, {k} at a time; Python {sys.version.split()[0]}, Optuna {optuna.__version__}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []

    def add(name, seconds, note=None):
        rows.append({"runner": name, "trials": n, "seconds": seconds, "trials_per_second": n / seconds if seconds else None, "note": note})
        rate = f"{n / seconds:10.1f}" if seconds else "         -"
        shown = f"{seconds:9.2f}" if seconds else "        -"
        print(f"{name:<44} {shown} s {rate} trials/s" + (f"   ({note})" if note else ""), flush=True)

    print(f"{'runner':<44} {'time':>11} {'rate':>19}")
    if args.rounds > 1:
        return interleaved(args, work, noop)
    add("bare subprocess loop (the floor)", timed(lambda: bare_loop(noop, n, k)))
    add("optuna in-process", timed(lambda: optuna_in_process(n, k)))
    add("optuna subprocess, in-memory storage", timed(lambda: optuna_subprocess(noop, n, k)))
    if not args.no_sqlite:
        db = "sqlite:///" + os.path.join(work, "optuna.db")
        add("optuna subprocess, sqlite storage", timed(lambda: optuna_subprocess(noop, n, k, db)))
    for i, binary in enumerate(args.sweep):
        folder = os.path.join(work, f"sweep{i}")
        os.makedirs(folder)
        seconds, why = sweep_run(os.path.abspath(binary), folder, noop, n, k)
        add(f"sweep run ({sweep_label(args.sweep, i)})", seconds, why)
    if not args.sweep:
        print("sweep run: skipped (no --sweep BINARY given)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    print(f"files in {work}")


def interleaved(args, work, noop):
    """The floor, Optuna's in-memory subprocess loop and sweep, one after the other, `rounds` times."""
    import statistics

    n, k = args.trials, args.parallel
    rates = {}
    for r in range(args.rounds):
        runs = [("floor", lambda: timed(lambda: bare_loop(noop, n, k))),
                ("optuna subprocess", lambda: timed(lambda: optuna_subprocess(noop, n, k)))]
        for i, binary in enumerate(args.sweep):
            def sweep_once(r=r, i=i, binary=binary):
                folder = os.path.join(work, f"round{r}-sweep{i}")
                os.makedirs(folder)
                seconds, why = sweep_run(os.path.abspath(binary), folder, noop, n, k)
                if why:
                    sys.exit(why)
                return seconds
            runs.append((f"sweep run ({sweep_label(args.sweep, i)})", sweep_once))
        for name, run in runs:
            rate = n / run()
            rates.setdefault(name, []).append(rate)
            print(f"round {r + 1}: {name:<36} {rate:10.1f} trials/s", flush=True)
    for name, values in rates.items():
        print(f"median of {args.rounds}: {name:<30} {statistics.median(values):10.1f} trials/s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rates, f, indent=2)
    print(f"files in {work}")


if __name__ == "__main__":
    main()
