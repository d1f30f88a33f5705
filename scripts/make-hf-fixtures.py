#!/usr/bin/env python3
"""Writes the reference fixtures for our forward pass: a random-init tiny Llama and a tiny Qwen2,
saved by Python transformers itself (config.json + model.safetensors), and the logits transformers
computes for fixed token ids. tests/it/hf_reference.rs loads the folders with sweep and compares.

With --peft: the logits PEFT computes with the LoRA checkpoint sweep wrote into
tests/fixtures/hf/tiny-llama-lora (`cargo run --release --example write_lora_fixture`), which
tests/it/export.rs compares with sweep's adapted and merged models.

Needs: pip install torch transformers peft   (run once; the outputs are committed)
Usage: python3 scripts/make-hf-fixtures.py [--peft]
"""
import sys
import json
import os

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf")
IDS = [[1, 5, 9, 3, 7, 2, 11, 4, 60, 33], [8, 8, 1, 0, 63, 17, 25, 40, 2, 6]]

COMMON = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    max_position_embeddings=128,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=2,
)


def write(name, model_cls, config):
    torch.manual_seed(1234)
    model = model_cls(config).eval().to(torch.float32)
    with torch.no_grad():
        # Norm gains away from 1, so their use is tested too.
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            if n.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
        logits = model(torch.tensor(IDS)).logits
    folder = os.path.join(OUT, name)
    model.save_pretrained(folder, safe_serialization=True)
    with open(os.path.join(folder, "expected_logits.json"), "w") as f:
        json.dump({"ids": IDS, "logits": logits.tolist(),
                   "transformers": transformers.__version__, "torch": torch.__version__}, f)
    print(name, tuple(logits.shape), "max |logit|", float(logits.abs().max()))




def write_peft_logits():
    from peft import PeftModel
    import peft
    adapter = os.path.join(OUT, "tiny-llama-lora")
    with torch.no_grad():
        base = LlamaForCausalLM.from_pretrained(os.path.join(OUT, "tiny-llama"), dtype=torch.float32).eval()
        logits = PeftModel.from_pretrained(base, adapter).eval()(torch.tensor(IDS)).logits
    with open(os.path.join(adapter, "expected_logits.json"), "w") as f:
        json.dump({"ids": IDS, "logits": logits.tolist(), "peft": peft.__version__,
                   "transformers": transformers.__version__}, f)
    print("tiny-llama-lora", tuple(logits.shape), "max |logit|", float(logits.abs().max()))


if "--peft" in sys.argv:
    write_peft_logits()
else:
    write("tiny-llama", LlamaForCausalLM, LlamaConfig(rope_theta=10000.0, tie_word_embeddings=False, **COMMON))
    write("tiny-qwen2", Qwen2ForCausalLM, Qwen2Config(rope_theta=1000000.0, tie_word_embeddings=True, **COMMON))
