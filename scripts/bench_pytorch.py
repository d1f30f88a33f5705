"""The PyTorch side of scripts/bench-vs-pytorch.sh: training speed of one configuration with
transformers (+ PEFT for LoRA), as sweep's examples/train_speed.rs measures its own.

    python scripts/bench_pytorch.py PRESET METHOD BATCH SEQ STEPS VOCAB THREADS

Random init, random tokens, loss on every token, AdamW, LoRA r 8 / alpha 16 on all seven
projections. Prints one JSON line: tokens/s and peak resident memory of this process.
"""

import json
import resource
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    # hidden, intermediate, layers, heads, kv heads (sweep's presets, src/spec/shape.rs)
    "tiny": (64, 128, 2, 4, 2),
    "llama-135m": (576, 1536, 30, 9, 3),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    preset, method, batch, seq, steps, vocab, threads = sys.argv[1:8]
    batch, seq, steps, vocab, threads = map(int, (batch, seq, steps, vocab, threads))
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    hidden, inter, layers, heads, kv = SHAPES[preset]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"),
        )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    ids = torch.randint(4, vocab, (batch, seq))

    def step() -> float:
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    step()  # warm-up, as sweep's bench does
    start = time.perf_counter()
    loss = 0.0
    for _ in range(steps):
        loss = step()
    secs = time.perf_counter() - start
    print(
        json.dumps(
            {
                "preset": preset,
                "method": method,
                "batch": batch,
                "seq": seq,
                "steps": steps,
                "threads": torch.get_num_threads(),
                "seconds_per_step": secs / steps,
                # The same count as sweep: input positions (seq - 1 per sequence).
                "tokens_per_sec": batch * (seq - 1) * steps / secs,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "loss": loss,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
