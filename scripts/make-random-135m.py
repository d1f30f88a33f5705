#!/usr/bin/env python3
"""Model folders in SmolLM2-135M-Instruct's shape with random weights, for measurements on the
real 135M shape without downloading it: config (30 layers, hidden 576, intermediate 1536, 9
heads, 3 key/value heads, vocabulary 49,152), SmolLM2-Instruct's chat template and special
tokens, and a byte-level BPE tokenizer learned from the given data (SmolLM2's own is not
bundled; prompts tokenize to a similar length). Used by scripts/bench-eval.sh and
scripts/validate-memory.sh.

`--arch` writes the same shape in another family, with that family's own features:
  llama     SmolLM2-135M itself: head_dim 64, tied head (models/random-135m-chat)
  qwen3     q/k RMSNorms, head_dim 128 as Qwen3 has it (queries 1152 wide against a hidden
            576), tied head as Qwen3-0.6B (models/random-135m-qwen3-chat)
  ernie4_5  biases on every projection (`use_bias`), head_dim 128 (ERNIE 4.5's default),
            tied head, interleaved rotary pairs (models/random-135m-ernie4_5-chat)
  mistral   a 4096-position sliding window (longer than any sequence used), untied head as
            Mistral's default (models/random-135m-mistral-chat)
  new       qwen3, ernie4_5 and mistral; all: the four.

    ~/.cache/sweep/bench-venv/bin/python scripts/make-random-135m.py [--arch A] [DATA_JSON] [OUT_DIR]
    (default: llama, data/clinc150-mini/train.json, the folder named above; OUT_DIR only with
    one architecture)
"""
import argparse, json, os

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
import transformers

SHAPE = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
    hidden_act="silu",
    initializer_range=0.041666666666666664,
)

# Per family: transformers' config and model classes, what it changes in the shape, rope_theta.
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True), 100000.0),
    "qwen3": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(head_dim=128, tie_word_embeddings=True, use_sliding_window=False),
        1000000.0,
    ),
    "ernie4_5": (
        "Ernie4_5Config",
        "Ernie4_5ForCausalLM",
        dict(head_dim=128, use_bias=True, tie_word_embeddings=True),
        500000.0,
    ),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(head_dim=None, sliding_window=4096, tie_word_embeddings=False),
        100000.0,
    ),
}


def default_out(arch):
    return "models/random-135m-chat" if arch == "llama" else f"models/random-135m-{arch}-chat"


def write_tokenizer(data, out):
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
    return tok.get_vocab_size()


def write_model(arch, data, out):
    os.makedirs(out, exist_ok=True)
    vocab = write_tokenizer(data, out)
    config_class, model_class, own, rope_theta = FAMILIES[arch]
    config = getattr(transformers, config_class)(
        **SHAPE, **own, rope_parameters={"rope_type": "default", "rope_theta": rope_theta}
    )
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config)
    model.save_pretrained(out, safe_serialization=True)
    # transformers 5 writes rope_parameters; older readers read rope_theta.
    path = os.path.join(out, "config.json")
    c = json.load(open(path))
    c["rope_theta"] = rope_theta
    json.dump(c, open(path, "w"), indent=2)
    print(f"{out}: {arch}, {sum(p.numel() for p in model.parameters())} parameters, "
          f"tokenizer of {vocab} tokens")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="llama", choices=[*FAMILIES, "new", "all"])
    ap.add_argument("data", nargs="?", default="data/clinc150-mini/train.json")
    ap.add_argument("out", nargs="?")
    a = ap.parse_args()
    archs = {"new": ["qwen3", "ernie4_5", "mistral"], "all": list(FAMILIES)}.get(a.arch, [a.arch])
    if a.out and len(archs) > 1:
        ap.error("OUT_DIR names one folder: give it with one --arch")
    for arch in archs:
        write_model(arch, a.data, a.out or default_out(arch))


if __name__ == "__main__":
    main()
