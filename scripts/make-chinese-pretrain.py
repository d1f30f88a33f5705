#!/usr/bin/env python3
"""Unlabelled Chinese news titles for post-pretraining the `tiny` preset (scripts/make-tiny-base-zh.sh).

The THUCNews titles set (scripts/make-chinese-data.py) has 10,000 labelled train titles: too few
for a small model from scratch to learn Chinese well enough to beat a character-bigram linear
model. THUCNews' own train.txt (180,000 titles, same source and classes) is kept out of git by
649453932/Chinese-Text-Classification-Pytorch; copies of parts of it are in other public
repositories. This script takes the title column of any `title<TAB>label` files (the labels are
never read) and the `src` of any {"src": ...} JSON-lines files, and writes

  OUT/train.json  {"text": title} lines, shuffled (seed 1), every title once
  OUT/dev.json    the last DEV_LINES (1,000) of the shuffle: held out, for post_pretrain's dev_loss

after removing every title that equals or contains a title of the evaluation dev set (--exclude,
by default ../sweep-data/thucnews-titles/dev.json, its `src`), so that no dev text is seen in
pretraining. What was read, dropped and written is printed and saved as OUT/provenance.json.
The data is not copied into this repository: write it outside (the default OUT is
../sweep-data/zh-pretrain).

The corpus docs/benchmarks.md measures (THUCNews' train.txt, first 45,000 titles, as committed in
github.com/zjuneverknow/cuhk_ai_project_3, plus the 10,000 labelled train titles of the titles set):

  git clone --depth 1 https://github.com/zjuneverknow/cuhk_ai_project_3 /tmp/thuc-train
  scripts/make-chinese-pretrain.py /tmp/thuc-train/THUCNews/data/train.txt \\
      ../sweep-data/thucnews-titles/train.json

Usage: scripts/make-chinese-pretrain.py [--out OUT] [--exclude DEV.json] [--max N] SOURCE...
  SOURCE  a `title<TAB>label` text file, a .json file of {"src": ...} lines, or
          spaced:FILE, lines of `label<TAB>c h a r s` or ` c h a r s` (NLPCC 2017's char files)
  --max N keep at most N titles for train.json after the shuffle (0: all)
"""

import argparse
import json
import os
import random
import sys

DEV_LINES = 1000
SPACED = "spaced:"


def read_titles(source):
    """Titles from one source, in order; the labels are dropped unread."""
    spaced = source.startswith(SPACED)
    path = source[len(SPACED) :] if spaced else source
    titles = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if path.endswith(".json"):
                try:
                    titles.append(json.loads(line)["src"].strip())
                except (ValueError, KeyError, AttributeError) as e:
                    sys.exit(f"{path}:{number}: expected a JSON object with `src`: {e}")
            elif spaced:
                _label, sep, chars = line.partition("\t")
                # NLPCC's char files put a space between characters: joined back.
                titles.append("".join(chars.split()) if sep else "".join(line.split()))
            else:
                title, sep, _label = line.rpartition("\t")
                if not sep:
                    sys.exit(f"{path}:{number}: expected `title<TAB>label`, got {line!r}")
                titles.append(title.strip())
    return [t for t in titles if t]


def leaks(title, excluded, lengths):
    """Whether `title` equals or contains an excluded title: every substring of an excluded
    title's length is looked up, which is fast for short texts."""
    if title in excluded:
        return True
    for n in lengths:
        for start in range(0, len(title) - n + 1):
            if title[start : start + n] in excluded:
                return True
    return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--out", default=os.path.join("..", "sweep-data", "zh-pretrain"))
    parser.add_argument(
        "--exclude", default=os.path.join("..", "sweep-data", "thucnews-titles", "dev.json")
    )
    parser.add_argument("--max", type=int, default=0)
    args = parser.parse_args()

    excluded = set(read_titles(args.exclude))
    lengths = sorted({len(t) for t in excluded})
    read, seen, kept, dropped_dev, duplicates = {}, set(), [], 0, 0
    for source in args.sources:
        titles = read_titles(source)
        read[source] = len(titles)
        for title in titles:
            if title in seen:
                duplicates += 1
                continue
            seen.add(title)
            if leaks(title, excluded, lengths):
                dropped_dev += 1
                continue
            kept.append(title)
    random.Random(1).shuffle(kept)
    if len(kept) <= DEV_LINES:
        sys.exit(f"only {len(kept)} titles left: need more than {DEV_LINES} (one dev set)")
    train, dev = kept[:-DEV_LINES], kept[-DEV_LINES:]
    if args.max:
        train = train[: args.max]

    os.makedirs(args.out, exist_ok=True)
    for name, rows in (("train", train), ("dev", dev)):
        with open(os.path.join(args.out, f"{name}.json"), "w", encoding="utf-8") as f:
            for title in rows:
                f.write(json.dumps({"text": title}, ensure_ascii=False) + "\n")
    provenance = {
        "sources": read,
        "excluded_from": args.exclude,
        "excluded_titles": len(excluded),
        "duplicates_dropped": duplicates,
        "dev_overlap_dropped": dropped_dev,
        "train_lines": len(train),
        "dev_lines": len(dev),
        "train_chars": sum(len(t) for t in train),
    }
    with open(os.path.join(args.out, "provenance.json"), "w", encoding="utf-8") as f:
        json.dump(provenance, f, ensure_ascii=False, indent=2)
    for source, n in read.items():
        print(f"{source}: {n} titles")
    print(
        f"dropped {duplicates} duplicates and {dropped_dev} titles equal to or containing one of "
        f"the {len(excluded)} titles of {args.exclude}"
    )
    print(f"{args.out}/train.json: {len(train)} lines; {args.out}/dev.json: {len(dev)} lines")


if __name__ == "__main__":
    main()
