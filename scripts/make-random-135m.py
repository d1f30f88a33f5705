#!/usr/bin/env python3
"""A model folder in SmolLM2-135M-Instruct's shape with random weights, for measurements on the
real 135M shape without downloading it: config (30 layers, hidden 576, 9 heads, 3 key/value
heads, vocabulary 49,152, tied head), SmolLM2-Instruct's chat template and special tokens, and a
byte-level BPE tokenizer learned from the given data (SmolLM2's own is not bundled; prompts
tokenize to a similar length). Used by scripts/bench-eval.sh and scripts/validate-memory.sh.

    ~/.cache/sweep/bench-venv/bin/python scripts/make-random-135m.py [DATA_JSON] [OUT_DIR]
    (default: data/clinc150-mini/train.json, models/random-135m-chat)
"""
import json, os, sys

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import LlamaConfig, LlamaForCausalLM

data = sys.argv[1] if len(sys.argv) > 1 else "data/clinc150-mini/train.json"
out = sys.argv[2] if len(sys.argv) > 2 else "models/random-135m-chat"
os.makedirs(out, exist_ok=True)

texts = []
for line in open(data, encoding="utf-8"):
    if line.strip():
        e = json.loads(line)
        texts += [e.get("system") or "", e["src"], e.get("tgt") or ""]

special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(
    texts,
    trainers.BpeTrainer(
        vocab_size=8000,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ),
)
tok.save(os.path.join(out, "tokenizer.json"))

template = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump(
        {
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|im_end|>",
            "chat_template": template,
            "tokenizer_class": "GPT2Tokenizer",
            "model_max_length": 8192,
        },
        f,
        indent=2,
    )

config = LlamaConfig(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
    hidden_act="silu",
    initializer_range=0.041666666666666664,
)
torch.manual_seed(0)
model = LlamaForCausalLM(config)
model.save_pretrained(out, safe_serialization=True)
# transformers 5 writes rope_parameters; older readers (and sweep) read rope_theta.
path = os.path.join(out, "config.json")
c = json.load(open(path))
c["rope_theta"] = config.rope_theta if hasattr(config, "rope_theta") else 100000.0
json.dump(c, open(path, "w"), indent=2)
print(f"{out}: {sum(p.numel() for p in model.parameters())} parameters, "
      f"tokenizer of {tok.get_vocab_size()} tokens")
