#!/usr/bin/env python3
"""A plain PyTorch training loop that reports to sweep: one JSON line per epoch on stdout.

    {"epoch": 2, "train_loss": 0.61, "val_loss": 0.58, "accuracy": 0.83}

The model is small on purpose (a bag of words: an EmbeddingBag and a linear layer) on the
bundled intent data (data/clinc150-mini); the part to copy into your own loop is `report`
and the few lines around it:

- print each evaluation as one JSON object on its own line, flushed (`report`); the key
  the sweep file's `metric.name` names is the one sweep ranks and prunes by;
- read hyperparameters from the command line as W&B passes them (`--learning_rate=0.01`);
- use the devices sweep gives you: it sets CUDA_VISIBLE_DEVICES to the trial's GPUs, so
  `cuda` is the trial's own first GPU;
- on SIGTERM (sweep stopping or pruning the trial), finish the step, save, and exit;
- save into $SWEEP_TRIAL_DIR and report the path as "checkpoint" if you want sweep to
  keep track of it.

A CUDA out-of-memory error is left to end the program: sweep recognises PyTorch's message on
stderr and records the trial as out of memory.

Run by hand: python3 examples/programs/pytorch_loop.py --epochs=5 --learning_rate=0.05
"""

import argparse
import json
import os
import signal
import sys

try:
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - the example needs PyTorch; the tests skip it without
    print("pytorch_loop.py needs PyTorch: pip install torch", file=sys.stderr)
    sys.exit(2)

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "data", "clinc150-mini")
STOP = {"signal": None}


def report(values):
    """One JSON line, written in one call and flushed: sweep reads it as it is printed."""
    sys.stdout.write(json.dumps(values) + "\n")
    sys.stdout.flush()


def arguments():
    p = argparse.ArgumentParser()
    p.add_argument("--learning_rate", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--embedding_dim", type=int, default=64)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", default=os.path.join(DATA, "train.json"))
    p.add_argument("--dev", default=os.path.join(DATA, "dev.json"))
    # W&B passes every parameter of the sweep; ignore the ones this program does not take.
    args, unknown = p.parse_known_args()
    for arg in unknown:
        print(f"pytorch_loop: ignoring {arg}", file=sys.stderr)
    return args


def read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def encode(rows, vocabulary, labels, grow):
    ids, offsets, targets = [], [], []
    for r in rows:
        offsets.append(len(ids))
        for w in r["src"].lower().split():
            if grow:
                vocabulary.setdefault(w, len(vocabulary))
            if w in vocabulary:
                ids.append(vocabulary[w])
        targets.append(labels[r["tgt"]])
    return torch.tensor(ids), torch.tensor(offsets), torch.tensor(targets)


def batches(data, size, shuffle, generator):
    ids, offsets, targets = data
    n = len(targets)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    ends = torch.cat([offsets[1:], torch.tensor([len(ids)])])
    for start in range(0, n, size):
        rows = order[start : start + size]
        pieces = [ids[offsets[i] : ends[i]] for i in rows]
        lengths = torch.tensor([len(p) for p in pieces])
        batch_offsets = torch.cat([torch.tensor([0]), lengths.cumsum(0)[:-1]])
        yield torch.cat(pieces), batch_offsets, targets[rows]


class BagOfWords(nn.Module):
    def __init__(self, vocabulary, dim, classes):
        super().__init__()
        self.embed = nn.EmbeddingBag(vocabulary, dim, mode="mean")
        self.out = nn.Linear(dim, classes)

    def forward(self, ids, offsets):
        return self.out(self.embed(ids, offsets))


def main():
    args = arguments()
    signal.signal(signal.SIGTERM, lambda s, f: STOP.update(signal=s))
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_rows, dev_rows = read(args.train), read(args.dev)
    labels = {t: i for i, t in enumerate(sorted({r["tgt"] for r in train_rows}))}
    vocabulary = {"<unk>": 0}
    train = encode(train_rows, vocabulary, labels, grow=True)
    dev = encode([r for r in dev_rows if r["tgt"] in labels], vocabulary, labels, grow=False)
    model = BagOfWords(len(vocabulary), args.embedding_dim, len(labels)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(args.seed)
    trial_dir = os.environ.get("SWEEP_TRIAL_DIR")
    best = -1.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        total, count = 0.0, 0
        for ids, offsets, targets in batches(train, args.batch_size, True, generator):
            if STOP["signal"] is not None:
                print(f"pytorch_loop: stopped in epoch {epoch}", file=sys.stderr)
                return 0
            ids, offsets, targets = ids.to(device), offsets.to(device), targets.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(ids, offsets), targets)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(targets)
            count += len(targets)
        model.eval()
        val_total, right = 0.0, 0
        with torch.no_grad():
            for ids, offsets, targets in batches(dev, 256, False, generator):
                ids, offsets, targets = ids.to(device), offsets.to(device), targets.to(device)
                logits = model(ids, offsets)
                val_total += loss_fn(logits, targets).item() * len(targets)
                right += (logits.argmax(-1) == targets).sum().item()
        n = len(dev[2])
        values = {"epoch": epoch, "train_loss": total / count, "val_loss": val_total / n, "accuracy": right / n}
        if trial_dir and values["accuracy"] > best:
            best = values["accuracy"]
            path = os.path.join(trial_dir, "checkpoint.pt")
            torch.save(model.state_dict(), path)
            values["checkpoint"] = path
        report(values)
    return 0


if __name__ == "__main__":
    sys.exit(main())
