#!/usr/bin/env python3
"""Writes tests/fixtures/hf/tiny-llama-classifier: a random-init tiny LlamaForSequenceClassification
saved by transformers itself (config.json with id2label, model.safetensors with `score.weight` and
no lm_head), a small byte-level BPE tokenizer with ChatML's special tokens, a ChatML chat template
(tokenizer_config.json), the labels.json sweep's checkpoints carry, and expected.json: three
examples, the ids of each prompt as `apply_chat_template(..., add_generation_prompt=True)` renders
it, and the log-softmax of the logits transformers computes for them in one right-padded batch
(pooling the last non-pad token). tests/it/classifier.rs loads the folder with `sweep eval`'s
loader and compares ids and log-probabilities.

Needs: pip install torch transformers tokenizers   (run once; the outputs are committed)
Usage: python3 scripts/make-classifier-fixture.py
"""
import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf",
                   "tiny-llama-classifier")
SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LABELS = ["greeting", "refund", "weather"]
EXAMPLES = [
    {"system": "Classify the query.", "src": "hello there, how are you", "tgt": "greeting"},
    {"system": "Classify the query.", "src": "I want my money back", "tgt": "refund"},
    {"system": "Classify the query.", "src": "will it rain tomorrow in the city?", "tgt": "weather"},
]
CORPUS = [e["src"] for e in EXAMPLES] + ["system user assistant Classify the query.",
                                         "the weather is nice, refund please, good morning"]


def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = tokenizer()
    tok.save(os.path.join(OUT, "tokenizer.json"))
    fast = PreTrainedTokenizerFast(tokenizer_file=os.path.join(OUT, "tokenizer.json"),
                                   pad_token="<pad>", eos_token="<|im_end|>")
    fast.chat_template = TEMPLATE
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": TEMPLATE, "pad_token": "<pad>", "eos_token": "<|im_end|>",
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
        max_position_embeddings=128, initializer_range=0.2, pad_token_id=0,
        bos_token_id=None, eos_token_id=2, tie_word_embeddings=False,
        id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)},
    )
    torch.manual_seed(4321)
    model = LlamaForSequenceClassification(config).eval().to(torch.float32)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    model.save_pretrained(OUT, safe_serialization=True)
    ids = [
        fast.apply_chat_template(
            [{"role": "system", "content": e["system"]}, {"role": "user", "content": e["src"]}],
            add_generation_prompt=True, tokenize=True, return_dict=False)
        for e in EXAMPLES
    ]
    ids = [list(x["input_ids"]) if isinstance(x, dict) else list(x) for x in ids]
    width = max(len(x) for x in ids)
    batch = torch.tensor([x + [0] * (width - len(x)) for x in ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(batch).logits, dim=-1).tolist()
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump({"examples": EXAMPLES, "ids": ids, "log_probs": log_probs}, f, indent=1)
    with open(os.path.join(OUT, "labels.json"), "w") as f:
        json.dump({"labels": LABELS, "max_seq_len": 64, "eval_batch": 2}, f, indent=2)
    with open(os.path.join(OUT, "data.json"), "w") as f:
        f.write("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    print("wrote", OUT, "prompt lengths", [len(x) for x in ids])


if __name__ == "__main__":
    main()
