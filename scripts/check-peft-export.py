#!/usr/bin/env python3
"""Checks sweep's LoRA checkpoints against the Python ecosystem: PEFT loads the adapter folder onto
its base, transformers loads the folder `sweep export --merge` wrote, and both give the same logits;
where the base has a chat template, the merged folder's tokenizer renders a conversation exactly as
the base's does (the export carries the tokenizer files and the template).

Needs: pip install torch transformers peft
Usage: python3 scripts/check-peft-export.py LORA_CHECKPOINT_DIR MERGED_DIR
  e.g. after the quickstart:
  cargo run --release -- export results/quickstart/trials/0016/checkpoint --merge /tmp/merged
  python3 scripts/check-peft-export.py results/quickstart/trials/0016/checkpoint /tmp/merged
"""
import json
import os
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

adapter_dir, merged_dir = sys.argv[1], sys.argv[2]
base_path = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))["base_model_name_or_path"]
with torch.no_grad():
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval()
    vocab = base.config.vocab_size
    ids = torch.tensor([[2, 5, 9, 3, 7, 11, 4, 20, 33, 8]]) % vocab
    base_logits = base(ids).logits
    peft_logits = PeftModel.from_pretrained(base, adapter_dir).eval()(ids).logits
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    merged_logits = merged(ids).logits
scale = float(peft_logits.abs().max())
diff = float((peft_logits - merged_logits).abs().max())
moved = float((peft_logits - base_logits).abs().max())
print(f"{type(merged).__name__}: PEFT-loaded adapter vs sweep-merged model: max |diff| {diff:.3e} "
      f"(relative {diff/scale:.3e}); the adapter moves the base's logits by up to {moved:.3f}")
ok = diff / scale < 1e-4 and moved > 1e-3

try:
    base_tok = AutoTokenizer.from_pretrained(base_path)
except Exception as e:  # a preset base has no tokenizer folder of its own
    base_tok = None
    print("no tokenizer in the base folder:", e)
if base_tok is not None and base_tok.chat_template:
    messages = [{"role": "system", "content": "Classify the query."},
                {"role": "user", "content": "明天 的 比赛 谁 赢？"}]
    want = base_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    got = AutoTokenizer.from_pretrained(merged_dir).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    print("merged folder's chat template renders", "as the base's" if got == want else "DIFFERENTLY", repr(got))
    ok = ok and got == want
sys.exit(0 if ok else 1)
