#!/usr/bin/env python3
"""Builds the bundled data from CLINC150 (../shared/data/clinc150, CC BY 3.0).

data/clinc150-mini/   the quickstart's labelled subset: 10 intents, train and dev in the seed's format
data/clinc150-text/   unlabelled queries ({"text": ...}) for post-pretraining the tiny base model
data/clinc150-levels/ two-level labels `domain/intent` (CLINC's domains.json): 4 domains of 3 intents

Deterministic: rerunning gives byte-identical files.
Usage: python3 scripts/make-data.py [path/to/clinc150]
"""
import json
import os
import random
import shutil
import sys

def default_source():
    here = os.path.dirname(os.path.abspath(__file__))
    for up in (("..", ".."), ("..", "..", "..")):
        path = os.path.join(here, *up, "shared", "data", "clinc150")
        if os.path.isdir(path):
            return path
    return os.path.join(here, "..", "..", "shared", "data", "clinc150")


SRC = sys.argv[1] if len(sys.argv) > 1 else default_source()
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")

INTENTS = ["alarm", "balance", "book_flight", "credit_score", "play_music",
           "recipe", "timer", "translate", "weather", "what_is_your_name"]
TRAIN_PER_INTENT = 60
DEV_PER_INTENT = 20
TEXT_DEV = 1000
# Two-level labels: three intents from each of four of CLINC's ten domains.
LEVEL_DOMAINS = {
    "banking": ["balance", "transfer", "freeze_account"],
    "travel": ["book_flight", "translate", "flight_status"],
    "utility": ["alarm", "timer", "weather"],
    "kitchen_and_dining": ["recipe", "calories", "restaurant_reservation"],
}
LEVELS_TRAIN_PER_INTENT = 20
LEVELS_DEV_PER_INTENT = 8


def read(name):
    with open(os.path.join(SRC, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    train, dev, test = read("train.json"), read("dev.json"), read("test.json")
    system = ("Classify the user query into one of these intents: " + ", ".join(sorted(INTENTS))
              + ". Answer with the intent name only.")

    def subset(rows, per_intent, seed):
        rng = random.Random(seed)
        out = []
        for intent in INTENTS:
            pool = [r for r in rows if r["tgt"] == intent]
            out += [{"system": system, "src": r["src"], "tgt": intent} for r in pool[:per_intent]]
        rng.shuffle(out)
        return out

    mini = os.path.join(ROOT, "clinc150-mini")
    write(os.path.join(mini, "train.json"), subset(train, TRAIN_PER_INTENT, 1))
    write(os.path.join(mini, "dev.json"), subset(dev, DEV_PER_INTENT, 2))

    # Unlabelled text: every training query of all 150 intents (no labels kept), and test queries
    # for the pretraining dev loss. None of the quickstart's dev queries (CLINC's val split) are in it.
    text = os.path.join(ROOT, "clinc150-text")
    write(os.path.join(text, "train.json"), [{"text": r["src"]} for r in train])
    rng = random.Random(3)
    held = test[:]
    rng.shuffle(held)
    write(os.path.join(text, "dev.json"), [{"text": r["src"]} for r in held[:TEXT_DEV]])

    levels = os.path.join(ROOT, "clinc150-levels")
    write_levels(levels, train, dev)

    for d in (mini, text, levels):
        shutil.copyfile(os.path.join(SRC, "LICENSE"), os.path.join(d, "LICENSE"))
        with open(os.path.join(d, "README.md"), "w", encoding="utf-8") as f:
            f.write(ATTRIBUTION)


def write_levels(folder, train, dev):
    """`domain/intent` labels, the domains as CLINC's domains.json has them (checked here)."""
    with open(os.path.join(SRC, "domains.json"), encoding="utf-8") as f:
        domains = json.load(f)
    labels = []
    for domain, intents in LEVEL_DOMAINS.items():
        for intent in intents:
            assert intent in domains[domain], (domain, intent)
            labels.append(domain + "/" + intent)
    system = ("Classify the user query into one of these domain/intent labels: "
              + ", ".join(sorted(labels)) + ". Answer with the label only.")

    def subset(rows, per_intent, seed):
        rng = random.Random(seed)
        out = []
        for label in labels:
            intent = label.split("/")[1]
            pool = [r for r in rows if r["tgt"] == intent]
            out += [{"system": system, "src": r["src"], "tgt": label} for r in pool[:per_intent]]
        rng.shuffle(out)
        return out

    write(os.path.join(folder, "train.json"), subset(train, LEVELS_TRAIN_PER_INTENT, 4))
    write(os.path.join(folder, "dev.json"), subset(dev, LEVELS_DEV_PER_INTENT, 5))


ATTRIBUTION = """# Derived from CLINC150 (CC BY 3.0)

Queries and intent labels from CLINC150 (https://github.com/clinc/oos-eval, `data_full.json`),
by Larson et al., "An Evaluation Dataset for Intent Classification and Out-of-Scope Prediction",
EMNLP-IJCNLP 2019 (https://www.aclweb.org/anthology/D19-1131). Licensed under Creative Commons
Attribution 3.0 Unported; the licence text is in LICENSE beside this file.

Changes: converted to one JSON object per line; `clinc150-mini` keeps 10 intents (60 train and
20 dev queries each, from CLINC's train and val splits) with a system prompt listing them;
`clinc150-text` keeps only the query text of CLINC's train split (and 1000 test-split queries as
dev); `clinc150-levels` keeps 12 intents of 4 domains (20 train and 8 dev queries each) labelled
`domain/intent` with the domains of CLINC's `domains.json`. Made by `scripts/make-data.py`.
"""

if __name__ == "__main__":
    main()
