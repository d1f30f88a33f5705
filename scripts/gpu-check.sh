#!/usr/bin/env bash
# Check a CUDA build of sweep on a real GPU: one table, non-zero exit on any failure.
#
#   scripts/gpu-check.sh BINARY            # sweep built by scripts/build-cuda.sh; may be .zst .gz .xz
#   scripts/gpu-check.sh BINARY --cpu-dry-run   # every part on the CPU (any build): checks the check
#
# Needs no Rust: the binary does the work (`sweep gpu-check`, see src/diagnostics/) on this source
# tree's fixtures and bundled data. This script unpacks the binary, finds the CUDA 13 libraries it
# opens (already on the loader's path, a system CUDA in $CUDA_HOME or /usr/local/cuda*, the
# nvidia-* CUDA 13 wheels inside an installed PyTorch's site-packages, or build-cuda.sh's wheel
# cache) and says which, checks that the driver's libcuda.so.1 is there (a dry run needs
# neither: the binary starts without them and says what is missing), measures
# PyTorch(+PEFT) on the same shapes when torch, transformers and peft import and see the GPU,
# and runs the check:
#   1 parity   logits and gradients on cuda:0 vs CPU (f32 within 1e-4 relative; bf16 stated)
#   2 sweep    a short sweep with devices: cuda, sft and lora, on the bundled data
#   3 speed    tokens/s and peak GPU memory, 135M shape, sft and lora (and PyTorch's)
#   4 oom      a trial forced into a real CUDA out-of-memory, recovered by halving its micro-batch
#   5 memory   measured against estimated peak memory
# Environment: SWEEP_GPU_CHECK_DIR (work folder, default a new temp folder), PYTHON (python3).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 1 ] || { sed -n '2,5p' "$0" >&2; exit 2; }
given="$1"
shift
dry_run=false
for a in "$@"; do [ "$a" = --cpu-dry-run ] && dry_run=true; done
[ -f "$given" ] || { echo "gpu-check.sh: no such file: $given" >&2; exit 2; }
work="${SWEEP_GPU_CHECK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/sweep-gpu-check.XXXXXX")}"
mkdir -p "$work"
python="${PYTHON:-python3}"

bin="$work/sweep"
case "$given" in
    *.zst) zstd -q -d -c "$given" >"$bin" ;;
    *.gz) gzip -d -c "$given" >"$bin" ;;
    *.xz) xz -d -c "$given" >"$bin" ;;
    *) cp "$given" "$bin" ;;
esac
chmod +x "$bin"

# A CUDA build (its --version says so) opens the CUDA libraries when a trial first uses a GPU
# (nothing is linked: vendor/candle-core/PATCH.md): the driver's libcuda.so.1, and the CUDA 13
# libraries below, which must be on the loader's path.
needs_cuda=false
if "$bin" --version 2>/dev/null | grep -q CUDA; then needs_cuda=true; fi
wanted=(libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13)

# Whether the loader finds FILE as things stand: in a folder of LD_LIBRARY_PATH, or in ld.so's cache.
loader_finds() {
    local d
    local IFS=:
    for d in ${LD_LIBRARY_PATH:-}; do [ -n "$d" ] && [ -e "$d/$1" ] && return 0; done
    ldconfig -p 2>/dev/null | grep -q "[[:space:]]$1 "
}
has_all() { local f; for f in "${wanted[@]}"; do [ -e "$1/$f" ] || return 1; done; }

libs="none needed (a build without CUDA)"
if $needs_cuda; then
    candidates=()
    [ -n "${CUDA_HOME:-}" ] && candidates+=("$CUDA_HOME/lib64" "$CUDA_HOME/lib" "$CUDA_HOME/targets/x86_64-linux/lib")
    for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64; do [ -d "$d" ] && candidates+=("$d"); done
    torch_site=$("$python" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null || true)
    [ -n "$torch_site" ] && candidates+=("$torch_site/nvidia/cu13/lib")
    candidates+=("${SWEEP_CUDA_CACHE:-$HOME/.cache/sweep/cuda13}/nvidia/cu13/lib")
    missing=""
    for f in "${wanted[@]}"; do loader_finds "$f" || missing="$missing $f"; done
    chosen=""
    if [ -z "$missing" ]; then
        libs="found by the loader as it is"
    else
        for d in "${candidates[@]}"; do
            if has_all "$d"; then
                chosen="$d"
                if [ -n "$torch_site" ] && [ "$d" = "$torch_site/nvidia/cu13/lib" ]; then
                    libs="CUDA 13 wheels in PyTorch's site-packages: $d"
                elif [ "$d" = "${SWEEP_CUDA_CACHE:-$HOME/.cache/sweep/cuda13}/nvidia/cu13/lib" ]; then
                    libs="build-cuda.sh's wheel cache: $d"
                else
                    libs="system CUDA: $d"
                fi
                break
            fi
        done
    fi
    if [ -n "$chosen" ]; then
        export LD_LIBRARY_PATH="$chosen${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    elif [ -n "$missing" ]; then
        if ! $dry_run; then
            echo "gpu-check.sh: the CUDA 13 libraries this binary opens were not found ($missing); looked on the loader's path and in ${candidates[*]}" >&2
            echo "gpu-check.sh: install PyTorch built for CUDA 13.0 (it brings the nvidia-* wheels), or the CUDA 13.0 toolkit, or set CUDA_HOME" >&2
            exit 2
        fi
        libs="not found here ($missing): a dry run, where opening cuda:0 must name them"
    fi
    if loader_finds libcuda.so.1; then
        libs="$libs; driver: libcuda.so.1 on the loader's path"
    elif ! $dry_run; then
        echo "gpu-check.sh: no NVIDIA driver here (libcuda.so.1 not found); a GPU host needs driver 580 or newer" >&2
        exit 2
    else
        libs="$libs; no driver (dry run: opening cuda:0 must say so)"
    fi
fi
echo "gpu-check.sh: binary $given; CUDA libraries: $libs" >&2

# PyTorch(+PEFT) on the same shapes as part 3, each method in its own process so each peak is its
# own. Peak = the CUDA context (device memory used after init, minus before) plus torch's peak
# reserved memory, comparable to nvidia-smi's per-process figure that part 3 reads for sweep.
torch_json="$work/torch.json"
if $dry_run; then
    echo '{"skipped": "CPU dry run"}' >"$torch_json"
elif ! "$python" -c 'import torch, transformers, peft, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo '{"skipped": "torch, transformers and peft do not all import here, or torch sees no GPU"}' >"$torch_json"
else
    for method in sft lora; do
        "$python" - "$method" >"$work/torch-$method.json" <<'PY' || echo "{\"error\": \"PyTorch $method run failed\"}" >"$work/torch-$method.json"
import json, subprocess, sys, time
method = sys.argv[1]
def used_mb():
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"], capture_output=True, text=True)
    return float(out.stdout.split()[0]) if out.returncode == 0 else float("nan")
before = used_mb()
import torch, transformers, peft
torch.backends.cuda.matmul.allow_tf32 = False  # f32 as ours (tf32: false)
torch.zeros(1, device="cuda"); torch.cuda.synchronize()
context = used_mb() - before
cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=10000.0,
    max_position_embeddings=2048, tie_word_embeddings=True)
torch.manual_seed(1)
model = transformers.LlamaForCausalLM(cfg).to("cuda", torch.float32)
if method == "lora":
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
batch, seq, steps = 8, 256, 10
ids = torch.randint(4, 49152, (batch, seq), device="cuda")
def step():
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
    return loss
step(); torch.cuda.synchronize()
start = time.time()
for _ in range(steps):
    loss = step()
torch.cuda.synchronize()
secs = time.time() - start
print(json.dumps({"tokens_per_sec": batch * seq * steps / secs,
    "peak_mb": context + torch.cuda.max_memory_reserved() / 2**20, "context_mb": context,
    "loss": float(loss), "attention": model.config._attn_implementation if hasattr(model, "config") else "?",
    "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"}))
PY
    done
    "$python" - "$work" >"$torch_json" <<'PY'
import json, sys
work = sys.argv[1]
out = {}
for m in ("sft", "lora"):
    with open(f"{work}/torch-{m}.json") as f:
        out[m] = json.loads(f.read().strip().splitlines()[-1])
    out["versions"] = out[m].get("versions", out.get("versions", ""))
print(json.dumps(out))
PY
fi

cd "$root"
set +e
"$bin" gpu-check --root "$root" --out "$work/run" --torch "$torch_json" --libs "$libs" "$@"
status=$?
set -e
echo "gpu-check.sh: exit status $status; logs and sweeps in $work/run" >&2
exit $status
