#!/usr/bin/env python3
"""The Python half of scripts/bench-methods.sh (standard library, plus scikit-learn for `baseline`).

  subset SRC DST N SEED     N lines of SRC (0: all), balanced over labels: each label's lines in a
                            seeded shuffle, taken round-robin, so every label is in a small subset
  baseline TRAIN DEV OUT    a character uni+bigram TF-IDF logistic regression on `src` (the query
                            alone: a linear model gains nothing from the system prompt every line
                            shares); writes {"accuracy", "fit_s", "predict_s", ...} to OUT
  table OUT                 one table of every run under OUT (OUT/SET/METHOD/results/results.csv,
                            OUT/SET/baseline.json), printed, and written to OUT/table.md and
                            OUT/table.json
"""

import csv
import json
import os
import random
import sys
import time


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [line for line in f if line.strip()]


def subset(src, dst, n, seed):
    lines = read_jsonl(src)
    n = int(n)
    if n <= 0 or n >= len(lines):
        chosen = lines
    else:
        by_label = {}
        for line in lines:
            by_label.setdefault(json.loads(line).get("tgt"), []).append(line)
        rng = random.Random(int(seed))
        groups = [by_label[k] for k in sorted(by_label, key=str)]
        for g in groups:
            rng.shuffle(g)
        chosen, i = [], 0
        while len(chosen) < n:
            for g in groups:
                if i < len(g) and len(chosen) < n:
                    chosen.append(g[i])
            i += 1
        rng.shuffle(chosen)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    with open(dst, "w", encoding="utf-8") as f:
        f.writelines(line if line.endswith("\n") else line + "\n" for line in chosen)
    labels = {json.loads(line).get("tgt") for line in chosen}
    print(f"{dst}: {len(chosen)} lines, {len(labels)} labels")


def baseline(train, dev, out):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    def load(path):
        rows = [json.loads(line) for line in read_jsonl(path)]
        return [r["src"] for r in rows], [r["tgt"] for r in rows]

    (xt, yt), (xd, yd) = load(train), load(dev)
    start = time.perf_counter()
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    model = LogisticRegression(C=10.0, max_iter=2000)
    model.fit(vec.fit_transform(xt), yt)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    predicted = model.predict(vec.transform(xd))
    predict_s = time.perf_counter() - start
    accuracy = sum(p == g for p, g in zip(predicted, yd)) / len(yd)
    result = {
        "method": "char-bigram logreg",
        "accuracy": accuracy,
        "fit_s": fit_s,
        "predict_s": predict_s,
        "train": len(xt),
        "dev": len(xd),
        "features": len(vec.vocabulary_),
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(f"{out}: accuracy {accuracy:.4f} ({len(xd)} dev), fit {fit_s:.1f} s, predict {predict_s:.2f} s")


def number(row, key):
    try:
        return float(row.get(key, ""))
    except ValueError:
        return None


def fmt(v, digits):
    return "" if v is None else f"{v:.{digits}f}"


def runs(out):
    """Every (set, method) run's best trial, and every baseline, in folder order."""
    rows = []
    for set_name in sorted(os.listdir(out)):
        folder = os.path.join(out, set_name)
        if not os.path.isdir(folder):
            continue
        dev_lines = len(read_jsonl(os.path.join(folder, "dev.json"))) if os.path.exists(
            os.path.join(folder, "dev.json")) else None
        for method in sorted(os.listdir(folder)):
            if not os.path.exists(os.path.join(folder, method, "sweep.yaml")):
                continue
            path = os.path.join(folder, method, "results", "results.csv")
            trials = []
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    trials = [r for r in csv.DictReader(f) if r["status"] in ("finished", "pruned")]
            if not trials:
                rows.append({"set": set_name, "method": method, "status": "failed"})
                continue
            best = max(trials, key=lambda r: number(r, "accuracy") or -1.0)
            eval_s = number(best, "seconds_per_evaluation")
            rows.append({
                "set": set_name,
                "method": method,
                "status": best["status"],
                "accuracy": number(best, "accuracy"),
                "train_s_per_epoch": number(best, "train_seconds_per_epoch"),
                "eval_s": eval_s,
                "eval_ms_per_example": eval_s * 1000 / dev_lines if eval_s and dev_lines else None,
                "peak_mb": number(best, "peak_rss_mb"),
                "trainable_params": number(best, "trainable_params"),
                "dev": dev_lines,
            })
        base = os.path.join(folder, "baseline.json")
        if os.path.exists(base):
            with open(base, encoding="utf-8") as f:
                b = json.load(f)
            rows.append({
                "set": set_name,
                "method": b["method"],
                "status": "finished",
                "accuracy": b["accuracy"],
                "train_s_per_epoch": b["fit_s"],
                "eval_s": b["predict_s"],
                "eval_ms_per_example": b["predict_s"] * 1000 / b["dev"],
                "peak_mb": None,
                "trainable_params": None,
                "dev": b["dev"],
            })
    return rows


def table(out):
    rows = runs(out)
    head = ["set", "method", "dev accuracy", "train s/epoch", "eval s", "eval ms/example",
            "peak MB", "trainable params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["status"] == "failed":
            lines.append(f"| {r['set']} | {r['method']} | failed: see {r['set']}/{r['method']}/run.log |" + " |" * 5)
            continue
        params = r.get("trainable_params")
        lines.append("| " + " | ".join([
            r["set"], r["method"], fmt(r["accuracy"], 4), fmt(r["train_s_per_epoch"], 2),
            fmt(r["eval_s"], 2), fmt(r["eval_ms_per_example"], 2), fmt(r["peak_mb"], 0),
            "" if params is None else f"{int(params):,}",
        ]) + " |")
    text = "\n".join(lines) + "\n"
    note = ("train s/epoch: training only, evaluations excluded (the baseline: its whole fit); "
            "eval s: one evaluation of the dev set (dev loss and accuracy; the baseline: predict); "
            "peak MB: the trial process's peak resident memory.\n")
    with open(os.path.join(out, "table.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n" + note)
    with open(os.path.join(out, "table.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1, ensure_ascii=False)
    print(text + "\n" + note, end="")


def main():
    commands = {"subset": (subset, 4), "baseline": (baseline, 3), "table": (table, 1)}
    if len(sys.argv) < 2 or sys.argv[1] not in commands or len(sys.argv) - 2 != commands[sys.argv[1]][1]:
        sys.exit(__doc__)
    fn, _ = commands[sys.argv[1]]
    fn(*sys.argv[2:])


if __name__ == "__main__":
    main()
