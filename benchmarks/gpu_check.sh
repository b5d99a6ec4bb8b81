#!/usr/bin/env bash
# GPU check: Qwen2-1.5B and Qwen2-7B shapes in bfloat16 on one H100/H200, a GRPO step's shape (64 prompts x G=8,
# prompt ~200 / response ~300 tokens; 32 prompts for 7B). Runs from the repository root (it changes there itself:
# `python -m benchmarks.<name>` needs it); `cme_reward` comes from src/ through PYTHONPATH when it is not installed.
# Writes JSON (+ PNG when matplotlib is there), logs and the inference-cost section under $OUT (default ./gpu_out).
# Needs torch + transformers only: no trl, no hub, no network (lm-eval is used if installed, else (b) is skipped).
# Budget: every step has its own timeout (140 + 70 + 170 + 70 s, plus ~20 s of checks): under 8 minutes in all.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
start=$SECONDS
log() { echo "[$((SECONDS - start)) s] $*" | tee -a "$OUT/gpu_check.log"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/nvidia-smi.csv" 2>&1
python - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import sys, torch, transformers
import cme_reward.engine
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0))
print("transformers", transformers.__version__)
print("cme_reward.engine imports trl:", "trl" in sys.modules)
try:
    import lm_eval
    print("lm_eval", getattr(lm_eval, "__version__", "installed"))
except ImportError:
    print("lm_eval not installed: method (b) will be skipped")
EOF

bench() {  # NAME TIMEOUT ARGS...
    local name=$1 limit=$2
    shift 2
    log "start $name"
    timeout "$limit" python -m benchmarks.scoring --device cuda --dtype bfloat16 \
        --out "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1
    log "end $name rc=$? ($(tail -n 1 "$OUT/$name.log"))"
}

COMMON=(--group-size 8 --prompt-len 100 400 --response-len 150 600)
# (a:float32 is the exact reference for the bf16 diffs; (a), (b), (c), (d) run in bf16)
bench gpu-qwen2-1.5b 140 --preset qwen2-1.5b --prompts 64 "${COMMON[@]}" --methods a:float32,a,b,c,d --repeats 1
bench gpu-qwen2-1.5b-budget32k 70 --preset qwen2-1.5b --prompts 64 "${COMMON[@]}" --methods c,d --budget 32768 \
    --repeats 3
bench gpu-qwen2-7b 170 --preset qwen2-7b --prompts 32 "${COMMON[@]}" --methods a:float32,a,b,c,d --repeats 1
bench gpu-qwen2-7b-budget32k 70 --preset qwen2-7b --prompts 32 "${COMMON[@]}" --methods c,d --budget 32768 \
    --repeats 3

python -m benchmarks.inference_cost --results "$OUT" --out "$OUT/inference_cost.md" > /dev/null 2>&1 \
    && log "wrote $OUT/inference_cost.md"
for f in "$OUT"/gpu-*.log; do echo "== $f"; grep -E '^\|' "$f"; done | tee "$OUT/summary.md"
log "done"
