#!/usr/bin/env python3
"""Checks sweep's head-method checkpoints (`classifier`, `classifier_lora`) against the Python
ecosystem: transformers' AutoModelForSequenceClassification loads a full checkpoint and a merged
export, PEFT loads a SEQ_CLS adapter folder onto its base, and each predicts every dev example as
the trial did (its dev_predictions.jsonl: the label and its log-probability), from the prompt as
the trial rendered it (the chat template with the generation prompt, or sweep's plain
"Query: ...\\nAnswer:" format without one; the system prompt dropped when labels.json says so),
all examples in one right-padded batch (transformers pools the last non-pad token).

Needs: pip install torch transformers peft
Usage: python3 scripts/check-classifier-export.py TRIAL_DIR DEV_FILE [MERGED_DIR]
  e.g. after `sweep run sweeps/methods.yaml --out /tmp/methods`:
  python3 scripts/check-classifier-export.py /tmp/methods/trials/0003 data/clinc150-mini/dev.json
  sweep export /tmp/methods/trials/0004/checkpoint --merge /tmp/merged
  python3 scripts/check-classifier-export.py /tmp/methods/trials/0004 data/clinc150-mini/dev.json /tmp/merged
"""
import json
import os
import sys

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast


def render(tokenizer, bos, example, drop_system):
    system = None if drop_system else example.get("system")
    if tokenizer.chat_template:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": example["src"]}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            return_dict=False)
        return list(ids["input_ids"]) if isinstance(ids, dict) else list(ids)
    text = (system + "\n\n" if system else "") + "Query: " + example["src"] + "\nAnswer:"
    return ([bos] if bos is not None else []) + tokenizer.encode(text, add_special_tokens=False)


def load_tokenizer(folder):
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))
    config_path = os.path.join(folder, "tokenizer_config.json")
    jinja = os.path.join(folder, "chat_template.jinja")
    if os.path.exists(jinja):
        tok.chat_template = open(jinja).read()
    elif os.path.exists(config_path):
        tok.chat_template = json.load(open(config_path)).get("chat_template")
    return tok


def main():
    trial, dev_file = sys.argv[1], sys.argv[2]
    merged = sys.argv[3] if len(sys.argv) > 3 else None
    checkpoint = os.path.join(trial, "checkpoint")
    labels = json.load(open(os.path.join(checkpoint, "labels.json")))
    names = labels["labels"]
    adapter = os.path.exists(os.path.join(checkpoint, "adapter_config.json"))
    with torch.no_grad():
        if adapter:
            from peft import PeftModel
            base = json.load(open(os.path.join(checkpoint, "adapter_config.json")))[
                "base_model_name_or_path"]
            model = AutoModelForSequenceClassification.from_pretrained(
                base, num_labels=len(names), dtype=torch.float32)
            models = {"PEFT adapter": PeftModel.from_pretrained(model, checkpoint).eval()}
            folder = base
        else:
            models = {"full checkpoint": AutoModelForSequenceClassification.from_pretrained(
                checkpoint, dtype=torch.float32).eval()}
            folder = checkpoint
        if merged:
            models["merged export"] = AutoModelForSequenceClassification.from_pretrained(
                merged, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(checkpoint if os.path.exists(
        os.path.join(checkpoint, "tokenizer.json")) else folder)
    config = json.load(open(os.path.join(folder, "config.json")))
    pad = config.get("pad_token_id") or 0
    examples = [json.loads(l) for l in open(dev_file) if l.strip()]
    ids = [render(tokenizer, config.get("bos_token_id"), e, labels.get("drop_system_prompt", False))
           for e in examples]
    ids = [x[-labels["max_seq_len"]:] if len(x) > labels["max_seq_len"] else x for x in ids]
    assert all(x[-1] != pad for x in ids), "a prompt ends in the pad token"
    width = max(len(x) for x in ids)
    batch = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    predictions = [json.loads(l) for l in open(os.path.join(trial, "dev_predictions.jsonl"))]
    ok = True
    for name, model in models.items():
        if name == "merged export":
            assert model.config.id2label[0] == names[0], model.config.id2label
        with torch.no_grad():
            log_probs = torch.log_softmax(model(batch).logits.float(), dim=-1)
        best = log_probs.argmax(-1).tolist()
        same = sum(names[b] == p["predicted"] for b, p in zip(best, predictions))
        diff = max(abs(float(log_probs[i, best[i]]) - p["top"][0]["logprob"])
                   for i, p in enumerate(predictions))
        print(f"{name}: {same}/{len(predictions)} predictions as the trial's, "
              f"max |log-prob diff| {diff:.2e}")
        ok = ok and same == len(predictions) and diff < 1e-4
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
