#!/usr/bin/env python3
"""transformers' side of the head methods' accuracy figures in docs/benchmarks.md: the same
recipe as sweep's trainer (prompt `bos [system\\n\\n]Query: {src}\\nAnswer:`, AdamW, 5 % linear
warmup then cosine to a tenth of the rate, gradient clipping at 1.0, one pass over a seeded
shuffle per epoch), in PyTorch, so that a figure of sweep's can be told apart from a defect of
sweep's. Benchmark venv only (torch, transformers, peft); nothing in CI runs it.

  head     LlamaForSequenceClassification (`score` over the last prompt token, or with
           --pool mean the mean over the prompt's tokens), all weights trained; prints each
           epoch's train loss and dev accuracy
  lora     LlamaForCausalLM with PEFT LoRA adapters (rank 8, alpha 16, every projection), the loss
           on the answer ` {tgt}</s>`; prints the train loss every 24 steps
  spread   how much the last prompt token's final hidden state differs between queries: the mean
           distance from the mean over the mean norm, for 60 dev lines, with and without the
           system prompt (a head reads this state)

Usage: head_reference.py MODE --model DIR --train T.json --dev D.json [--system keep|drop]
       [--lr 3e-3] [--wd 0] [--epochs 2] [--batch 16] [--seed 0] [--scratch] [--pool last|mean]
--model: a model folder (config.json, model.safetensors, tokenizer.json); --scratch: its shape
with random weights (std 0.02, as sweep's presets), e.g. a `tiny` preset checkpoint's folder.
"""

import argparse
import json
import math
import random

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)


def rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def prompt(tok, bos, row, keep):
    system = row.get("system") if keep else None
    text = (system + "\n\n" if system else "") + "Query: " + row["src"] + "\nAnswer:"
    return [bos] + tok.encode(text, add_special_tokens=False)


def padded(seqs, pad=0):
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, : len(s)] = torch.tensor(s)
    return ids


def rate(a, step, total):
    warm = math.ceil(0.05 * total)
    if step < warm:
        return a.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def head(a, tok, cfg):
    train, dev = rows(a.train), rows(a.dev)
    labels = sorted({r["tgt"] for r in train})
    index = {label: i for i, label in enumerate(labels)}
    cfg.num_labels, cfg.pad_token_id = len(labels), 0
    if a.scratch:
        model = LlamaForSequenceClassification(cfg)
    else:
        model = LlamaForSequenceClassification.from_pretrained(a.model, config=cfg)
    keep = a.system == "keep"

    def logits(batch):
        ids = padded([prompt(tok, cfg.bos_token_id, r, keep) for r in batch])
        if a.pool == "last":
            return model(input_ids=ids).logits
        hidden = model.model(input_ids=ids).last_hidden_state
        mask = (ids != 0).float().unsqueeze(-1)
        return model.score((hidden * mask).sum(1) / mask.sum(1))

    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.wd)
    total, step = a.epochs * (len(train) // a.batch), 0
    for epoch in range(a.epochs):
        random.Random(a.seed + epoch).shuffle(train)
        model.train()
        losses = []
        for i in range(0, len(train) - a.batch + 1, a.batch):
            batch = train[i : i + a.batch]
            for g in opt.param_groups:
                g["lr"] = rate(a, step, total)
            gold = torch.tensor([index[r["tgt"]] for r in batch])
            loss = torch.nn.functional.cross_entropy(logits(batch), gold)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            step += 1
            losses.append(loss.item())
        model.eval()
        right = 0
        with torch.no_grad():
            for i in range(0, len(dev), 64):
                batch = dev[i : i + 64]
                best = logits(batch).argmax(-1).tolist()
                right += sum(b == index.get(r["tgt"], -1) for b, r in zip(best, batch))
        print(f"epoch {epoch + 1}: train loss {sum(losses) / len(losses):.3f}, "
              f"dev accuracy {right / len(dev):.4f}", flush=True)


def lora(a, tok, cfg):
    from peft import LoraConfig, get_peft_model

    model = LlamaForCausalLM.from_pretrained(a.model)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=targets))
    keep = a.system == "keep"
    data = []
    for r in rows(a.train):
        p = prompt(tok, cfg.bos_token_id, r, keep)
        data.append((p, tok.encode(" " + r["tgt"], add_special_tokens=False) + [cfg.eos_token_id]))
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=a.lr, weight_decay=a.wd)
    total, step = a.epochs * (len(data) // a.batch), 0
    for epoch in range(a.epochs):
        random.Random(a.seed + epoch).shuffle(data)
        for i in range(0, len(data) - a.batch + 1, a.batch):
            batch = data[i : i + a.batch]
            ids = padded([p + t for p, t in batch])
            targets_ = torch.full(ids.shape, -100)
            for j, (p, t) in enumerate(batch):
                targets_[j, len(p) : len(p) + len(t)] = torch.tensor(t)
            for g in opt.param_groups:
                g["lr"] = rate(a, step, total)
            loss = model(input_ids=ids, labels=targets_).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            opt.step()
            opt.zero_grad()
            if step % 24 == 0:
                print(f"step {step + 1}: train loss {loss.item():.2f}", flush=True)
            step += 1


def spread(a, tok, cfg):
    model = LlamaForCausalLM.from_pretrained(a.model).eval()
    dev = rows(a.dev)[:60]
    for keep in (False, True):
        states = []
        for r in dev:
            ids = torch.tensor([prompt(tok, cfg.bos_token_id, r, keep)])
            with torch.no_grad():
                out = model(input_ids=ids, output_hidden_states=True)
            states.append(out.hidden_states[-1][0, -1])
        h = torch.stack(states)
        ratio = (h - h.mean(0)).norm(dim=1).mean() / h.norm(dim=1).mean()
        print(f"system prompt {'kept' if keep else 'dropped'}: prompt of {ids.shape[1]} tokens, "
              f"spread {ratio.item():.3f} of the state's norm")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["head", "lora", "spread"])
    p.add_argument("--model", required=True)
    p.add_argument("--train")
    p.add_argument("--dev", required=True)
    p.add_argument("--system", choices=["keep", "drop"], default="drop")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--wd", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scratch", action="store_true")
    p.add_argument("--pool", choices=["last", "mean"], default="last")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    tok = PreTrainedTokenizerFast(tokenizer_file=f"{a.model}/tokenizer.json")
    cfg = LlamaConfig.from_pretrained(a.model)
    {"head": head, "lora": lora, "spread": spread}[a.mode](a, tok, cfg)


if __name__ == "__main__":
    main()
