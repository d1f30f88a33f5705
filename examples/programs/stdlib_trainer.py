#!/usr/bin/env python3
"""A real learner in the Python standard library only, for sweeping as "your own program".

Multinomial logistic regression over word unigrams, word bigrams and character trigrams,
trained with minibatch SGD on the bundled intent data (data/clinc150-mini: one JSON object
a line with "system", "src" the query and "tgt" its intent). After every epoch it prints one
JSON line on stdout, which is how a program reports to sweep:

    {"epoch": 1, "train_loss": 2.05, "val_loss": 1.93, "accuracy": 0.54}

Hyperparameters come from the command line in any of W&B's forms, so the one program serves
every macro of a W&B sweep file's `command`:

    --learning_rate=0.5          ${args}
    --learning_rate 0.5          ${args_no_equals}
    learning_rate=0.5            ${args_no_hyphens}   (+name=v, ++name=v: the hydra forms)
    --shuffle                    ${args_no_boolean_flags} (a bare flag is true)
    '{"learning_rate": 0.5}'     ${args_json}
    params.json                  ${args_json_file}   (a path ending in .json)

Values are read as W&B writes them (Python's str: True, False, None, 1e-05, [1, 2]). Unknown
names are reported on stderr and ignored, so a sweep may carry parameters meant for others.

Parameters: learning_rate (0.5), epochs (10), batch_size (32), l2 (1e-4), init_scale (0.5:
the standard deviation of the random initial weights), seed (0),
features ("word+char": "word" for words only), sleep (seconds to wait per epoch: a slow
trial for tests), simulate_oom_above_batch (N: with batch_size > N, print PyTorch's CUDA
out-of-memory error and exit 1), fail_at_epoch (N: raise an error in epoch N), train, dev.

Under sweep (SWEEP_TRIAL_DIR set), the best epoch's weights are saved in
$SWEEP_TRIAL_DIR/checkpoint/model.json and that path is reported as "checkpoint".

SIGTERM or SIGINT stops it at the next minibatch: it prints no partial line, says on stderr
where it stopped, and exits with status 0.
"""

import ast
import json
import math
import os
import random
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "data", "clinc150-mini")

DEFAULTS = {
    "learning_rate": 0.5,
    "epochs": 10,
    "batch_size": 32,
    "l2": 1e-4,
    "init_scale": 0.5,
    "seed": 0,
    "features": "word+char",
    "sleep": 0.0,
    "simulate_oom_above_batch": None,
    "fail_at_epoch": None,
    "train": os.path.join(DATA, "train.json"),
    "dev": os.path.join(DATA, "dev.json"),
}

STOP = {"signal": None}


def on_signal(signum, _frame):
    STOP["signal"] = signum


def value_of(text):
    """A value as W&B writes it: True/False/None, numbers, Python literals, else the text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_args(argv):
    """Every W&B argument form into one dict of name -> value."""
    given = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg.startswith("{"):
            given.update(json.loads(arg))
        elif arg.endswith(".json") and os.path.isfile(arg):
            with open(arg, encoding="utf-8") as f:
                given.update(json.load(f))
        elif arg.startswith("--"):
            name, eq, text = arg[2:].partition("=")
            if eq:
                given[name] = value_of(text)
            elif i < len(argv) and not argv[i].startswith("--"):
                given[name] = value_of(argv[i])
                i += 1
            else:
                given[name] = True
        elif "=" in arg:
            name, _, text = arg.lstrip("+").partition("=")
            given[name] = value_of(text)
        else:
            print(f"stdlib_trainer: ignoring argument {arg!r}", file=sys.stderr)
    config = dict(DEFAULTS)
    for name, value in given.items():
        if name in config:
            config[name] = value
        else:
            print(f"stdlib_trainer: ignoring unknown parameter {name}={value!r}", file=sys.stderr)
    return config


def read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def features(text, kind):
    """The query's features, sorted: a set's order changes from run to run (string hashing is
    randomised), and feature ids must not, for a seed to give the same curve every time."""
    words = text.lower().split()
    out = {"w:" + w for w in words}
    out.update("b:" + a + " " + b for a, b in zip(words, words[1:]))
    if "char" in kind:
        padded = " " + " ".join(words) + " "
        out.update("c:" + padded[k : k + 3] for k in range(len(padded) - 2))
    return sorted(out)


class Model:
    def __init__(self, labels, features, init_scale, rng):
        """Weights drawn at random (Gaussian, standard deviation `init_scale`), as a neural
        network's are: the first epochs must undo them, which is what makes the curve."""
        self.labels = labels
        k = len(labels)
        # feature id -> list of one weight per label
        self.weights = {f: [rng.gauss(0.0, init_scale) for _ in range(k)] for f in range(features)}
        self.bias = [0.0] * k

    def probabilities(self, ids):
        scores = list(self.bias)
        for f in ids:
            row = self.weights.get(f)
            if row is not None:
                for c, w in enumerate(row):
                    scores[c] += w
        top = max(scores)
        exps = [math.exp(s - top) for s in scores]
        total = sum(exps)
        return [e / total for e in exps]

    def step(self, batch, lr, l2):
        """One SGD step on a minibatch of (feature ids, label index); its mean loss."""
        k = len(self.labels)
        grads = {}
        bias_grad = [0.0] * k
        loss = 0.0
        for ids, y in batch:
            p = self.probabilities(ids)
            loss -= math.log(max(p[y], 1e-12))
            p[y] -= 1.0
            for c in range(k):
                bias_grad[c] += p[c]
            for f in ids:
                g = grads.setdefault(f, [0.0] * k)
                for c in range(k):
                    g[c] += p[c]
        n = len(batch)
        for c in range(k):
            self.bias[c] -= lr * bias_grad[c] / n
        for f, g in grads.items():
            row = self.weights.setdefault(f, [0.0] * k)
            for c in range(k):
                row[c] -= lr * (g[c] / n + l2 * row[c])
        return loss / n

    def evaluate(self, examples):
        loss, right = 0.0, 0
        for ids, y in examples:
            p = self.probabilities(ids)
            loss -= math.log(max(p[y], 1e-12))
            right += max(range(len(p)), key=p.__getitem__) == y
        return loss / len(examples), right / len(examples)


def pause(seconds):
    """Sleep, in short naps, so that a signal stops the program at once."""
    end = time.monotonic() + seconds
    while STOP["signal"] is None and time.monotonic() < end:
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))


def out_of_memory(batch_size):
    """What PyTorch prints when a batch does not fit in a GPU's memory."""
    mib = 20.0 * batch_size
    sys.stderr.write(
        "Traceback (most recent call last):\n"
        f'  File "{os.path.basename(__file__)}", line 1, in <module>\n'
        f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {mib:.2f} MiB. "
        "GPU 0 has a total capacity of 79.15 GiB of which 3.25 MiB is free. "
        "Including non-PyTorch memory, this process has 79.14 GiB memory in use.\n"
    )
    sys.exit(1)


def save(model, trial_dir):
    folder = os.path.join(trial_dir, "checkpoint")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"labels": model.labels, "bias": model.bias, "weights": model.weights}, f)
    os.replace(path + ".tmp", path)
    return path


def report(values):
    """One JSON line, written in one call and flushed: a reader never sees half of it."""
    sys.stdout.write(json.dumps(values) + "\n")
    sys.stdout.flush()


def main(argv):
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    config = parse_args(argv)
    batch_size = int(config["batch_size"])
    oom_above = config["simulate_oom_above_batch"]
    if oom_above is not None and batch_size > int(oom_above):
        out_of_memory(batch_size)
    rng = random.Random(int(config["seed"]))
    train_rows, dev_rows = read(config["train"]), read(config["dev"])
    labels = sorted({r["tgt"] for r in train_rows})
    index = {label: i for i, label in enumerate(labels)}
    vocabulary = {}
    train = []
    for r in train_rows:
        ids = [vocabulary.setdefault(f, len(vocabulary)) for f in features(r["src"], config["features"])]
        train.append((ids, index[r["tgt"]]))
    dev = [
        ([vocabulary[f] for f in features(r["src"], config["features"]) if f in vocabulary], index[r["tgt"]])
        for r in dev_rows
        if r["tgt"] in index
    ]
    model = Model(labels, len(vocabulary), float(config["init_scale"]), rng)
    trial_dir = os.environ.get("SWEEP_TRIAL_DIR")
    best = -1.0
    lr, l2 = float(config["learning_rate"]), float(config["l2"])
    for epoch in range(1, int(config["epochs"]) + 1):
        if config["fail_at_epoch"] is not None and epoch == int(config["fail_at_epoch"]):
            raise RuntimeError(f"failing at epoch {epoch} as asked (--fail_at_epoch)")
        rng.shuffle(train)
        losses = []
        for start in range(0, len(train), batch_size):
            if STOP["signal"] is not None:
                name = signal.Signals(STOP["signal"]).name
                print(f"stdlib_trainer: {name} in epoch {epoch}: stopping", file=sys.stderr)
                return 0
            losses.append(model.step(train[start : start + batch_size], lr, l2))
        val_loss, accuracy = model.evaluate(dev)
        values = {
            "epoch": epoch,
            "train_loss": round(sum(losses) / len(losses), 6),
            "val_loss": round(val_loss, 6),
            "accuracy": round(accuracy, 6),
        }
        if trial_dir and accuracy > best:
            best = accuracy
            values["checkpoint"] = save(model, trial_dir)
        report(values)
        pause(float(config["sleep"] or 0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
