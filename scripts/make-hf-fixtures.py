#!/usr/bin/env python3
"""Writes the reference fixtures for our forward pass: random-init tiny Llama, Qwen2, Qwen3,
ERNIE 4.5 and Mistral models, saved by Python transformers itself (config.json + model.safetensors),
and the logits transformers computes for fixed token ids. tests/it/hf_reference.rs loads the
folders with sweep and compares. The Qwen3, ERNIE 4.5 and Mistral folders also hold the gradients
of the mean next-token cross-entropy (expected_gradients.json: small tensors whole, large ones
as their first values and norm), a word-level tokenizer with a chat template (Qwen3: as
chat_template.jinja; ERNIE 4.5: inside tokenizer_config.json; Mistral: none) and what
`apply_chat_template` renders with it (expected_chat.json).

With --peft [NAMES]: the logits PEFT computes with the LoRA checkpoints sweep wrote into
tests/fixtures/hf/NAME-lora (`cargo run --release --example write_lora_fixture NAMES`; default
tiny-llama), which tests/it/export.rs compares with sweep's adapted and merged models.

Needs: pip install torch transformers peft   (run once; the outputs are committed)
Usage: python3 scripts/make-hf-fixtures.py [--peft [NAMES] | --new-families]
(`~/.cache/sweep/bench-venv/bin/python` has them.)
"""
import sys
import json
import os

import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM, Ernie4_5Config, Ernie4_5ForCausalLM,
                          MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast)

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
    return model, folder


# Gradients: small tensors whole, larger ones as their first values and their norm (the
# fixtures stay small).
WHOLE = 64


def write_gradients(model, folder):
    model.zero_grad()
    ids = torch.tensor(IDS)
    logits = model(ids).logits
    vocab = logits.shape[-1]
    # The mean next-token cross-entropy: what sweep's post_pretrain loss is on these rows.
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
    loss.backward()
    grads = {}
    for n, p in model.named_parameters():
        g = p.grad.detach().flatten()
        grads[n] = {"first": g[:WHOLE].tolist(), "norm": float(g.norm()), "numel": g.numel()}
    with open(os.path.join(folder, "expected_gradients.json"), "w") as f:
        json.dump({"ids": IDS, "loss": float(loss.detach()), "gradients": grads}, f)
    print("  loss", float(loss.detach()), "tensors", len(grads))


# Written here for these fixtures, in the manner of each family's own template (ChatML with
# thinking tags for Qwen3; ERNIE's "User:/Assistant:" turns): what matters is that sweep's Jinja
# renders what Python's does, with the constructs real templates use.
QWEN3_STYLE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- set ns = namespace(last_query=messages|length - 1) %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}{{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set content = message.content %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + content.strip() + '<|im_end|>\\n' }}"
    "{%- elif message.role != 'system' %}{{- raise_exception('unexpected role ' + message.role) }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
ERNIE_STYLE = (
    "{%- if not add_generation_prompt is defined %}{%- set add_generation_prompt = false %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{- message['content'] | trim + '\\n' }}"
    "{%- elif message['role'] == 'user' %}{{- 'User: ' + message['content'] | trim + '\\n' }}"
    "{%- elif message['role'] == 'assistant' %}{{- 'Assistant: ' + message['content'] | trim + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'Assistant: ' }}{%- endif %}"
)
MISTRAL_STYLE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}{%- set rest = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- set rest = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in rest %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{- raise_exception('roles must alternate user/assistant') }}{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.first and system != '' %}{{- '[INST] ' + system + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- else %}{{- ' ' + message['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
)
MESSAGES = [
    {"role": "system", "content": "Classify the query. Labels: 体育/足球, 财经/股票, book_flight."},
    {"role": "user", "content": "  明天 的 比赛 谁 赢？  "},
]
ANSWER = "体育/足球"


def write_tokenizer_and_chat(folder, template, as_jinja):
    """A word-level tokenizer (the tiny-llama-lora one) with `template`, saved by transformers,
    and what apply_chat_template renders: the prompt, and the conversation with the answer."""
    tok = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(OUT, "tiny-llama-lora", "tokenizer.json"),
        bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>")
    tok.chat_template = template
    tok.save_pretrained(folder, save_jinja_files=as_jinja)
    prompt = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(MESSAGES + [{"role": "assistant", "content": ANSWER}], tokenize=False)
    with open(os.path.join(folder, "expected_chat.json"), "w") as f:
        json.dump({"messages": MESSAGES, "answer": ANSWER, "prompt": prompt, "full": full}, f, ensure_ascii=False)
    print("  chat template in", "chat_template.jinja" if as_jinja else "tokenizer_config.json")


def write_new_families():
    small = dict(COMMON, pad_token_id=None)
    model, folder = write("tiny-qwen3", Qwen3ForCausalLM, Qwen3Config(
        rope_theta=1000000.0, tie_word_embeddings=True, head_dim=12, **small))
    write_gradients(model, folder)
    write_tokenizer_and_chat(folder, QWEN3_STYLE, as_jinja=True)
    model, folder = write("tiny-ernie4_5", Ernie4_5ForCausalLM, Ernie4_5Config(
        rope_theta=500000.0, tie_word_embeddings=True, head_dim=12, use_bias=True, **small))
    write_gradients(model, folder)
    write_tokenizer_and_chat(folder, ERNIE_STYLE, as_jinja=False)
    # A window longer than the ids: within it Mistral is Llama (sweep refuses longer sequences).
    model, folder = write("tiny-mistral", MistralForCausalLM, MistralConfig(
        rope_theta=10000.0, tie_word_embeddings=False, sliding_window=16, **small))
    write_gradients(model, folder)
    write_tokenizer_and_chat(folder, MISTRAL_STYLE, as_jinja=True)




def write_peft_logits(bases):
    from peft import PeftModel
    import peft
    from transformers import AutoModelForCausalLM
    for name in bases:
        adapter = os.path.join(OUT, name + "-lora")
        with torch.no_grad():
            base = AutoModelForCausalLM.from_pretrained(os.path.join(OUT, name), dtype=torch.float32).eval()
            logits = PeftModel.from_pretrained(base, adapter).eval()(torch.tensor(IDS)).logits
        with open(os.path.join(adapter, "expected_logits.json"), "w") as f:
            json.dump({"ids": IDS, "logits": logits.tolist(), "peft": peft.__version__,
                       "transformers": transformers.__version__}, f)
        print(name + "-lora", tuple(logits.shape), "max |logit|", float(logits.abs().max()))


if "--peft" in sys.argv:
    # The LoRA folders `cargo run --release --example write_lora_fixture [NAMES]` wrote.
    write_peft_logits([a for a in sys.argv[1:] if a != "--peft"] or ["tiny-llama"])
elif "--new-families" in sys.argv:
    write_new_families()
else:
    write("tiny-llama", LlamaForCausalLM, LlamaConfig(rope_theta=10000.0, tie_word_embeddings=False, **COMMON))
    write("tiny-qwen2", Qwen2ForCausalLM, Qwen2Config(rope_theta=1000000.0, tie_word_embeddings=True, **COMMON))
    write_new_families()
