#!/usr/bin/env python3
"""Chinese news titles in the seed's format, for trying sweep on Chinese single-query classification.

Source: the THUCNews title subset of github.com/649453932/Chinese-Text-Classification-Pytorch
(MIT licence, Copyright (c) 2019 huwenxing; THUCNews itself is from Tsinghua University's NLP
group, THUCTC). Its THUCNews/data/ holds `title<TAB>class id` lines: dev.txt and test.txt (10,000
titles each, 10 balanced classes; train.txt, 180,000 titles, is kept out of its git history by
size). This script writes:

  OUT/train.json  the 10,000 titles of test.txt
  OUT/dev.json    every 5th title of dev.txt (2,000)

one {"system", "src", "tgt"} object per line, the system prompt listing every class in Chinese as
the seed's user writes it. The data is not copied into this repository: write it outside (the
default is ../sweep-data/thucnews-titles, beside the repository, which sweeps/thucnews-titles.yaml
reads).

Usage:
  git clone --depth 1 https://github.com/649453932/Chinese-Text-Classification-Pytorch /tmp/thuc
  scripts/make-chinese-data.py /tmp/thuc [OUT]
"""

import json
import os
import sys

# class.txt's English names, in its order (the class ids), and THUCNews' own Chinese names.
CHINESE = {
    "finance": "财经",
    "realty": "房产",
    "stocks": "股票",
    "education": "教育",
    "science": "科技",
    "society": "社会",
    "politics": "时政",
    "sports": "体育",
    "game": "游戏",
    "entertainment": "娱乐",
}


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def convert(path, classes, system, keep_every):
    rows = []
    for number, line in enumerate(read_lines(path), start=1):
        title, sep, class_id = line.rpartition("\t")
        if not sep or not class_id.strip().isdigit() or int(class_id) >= len(classes):
            sys.exit(f"{path}:{number}: expected `title<TAB>class id`, got {line!r}")
        if (number - 1) % keep_every:
            continue
        rows.append({"system": system, "src": title.strip(), "tgt": classes[int(class_id)]})
    return rows


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    source = os.path.join(sys.argv[1], "THUCNews", "data")
    out = sys.argv[2] if len(sys.argv) == 3 else os.path.join("..", "sweep-data", "thucnews-titles")
    names = read_lines(os.path.join(source, "class.txt"))
    unknown = [n for n in names if n not in CHINESE]
    if unknown:
        sys.exit(f"{source}/class.txt: unknown class names {unknown}")
    classes = [CHINESE[n] for n in names]
    system = f"你精通query分类，query类别有：{'、'.join(classes)}，请判断下面这个query属于哪一类。"
    os.makedirs(out, exist_ok=True)
    for name, source_file, keep_every in (("train", "test.txt", 1), ("dev", "dev.txt", 5)):
        rows = convert(os.path.join(source, source_file), classes, system, keep_every)
        with open(os.path.join(out, f"{name}.json"), "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{out}/{name}.json: {len(rows)} lines from {source_file}")


if __name__ == "__main__":
    main()
