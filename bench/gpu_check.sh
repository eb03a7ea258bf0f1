#!/usr/bin/env bash
# The GPU check of issue 13, in one go (about 8 minutes on one H100/H200):
#   1. Qwen2.5-0.5B shape, full SFT: our trainer's entry point vs HF Trainer padding-free
#      (DataCollatorWithFlattening, fused AdamW) vs TRL SFTTrainer packed (when trl imports);
#   2. the same with LoRA (r 16, all linear layers);
#   3. Llama-3-8B shape, LoRA, packed micro-batches of about 4,096 tokens: ours alone, against
#      NeMo AutoModel's published 12,473 tokens/s on one H100.
# Models are built from configs with random weights: nothing is downloaded. Each run prints and
# writes bench/trainer_throughput.py's JSON (tokens/s, MFU, peak memory, losses); a summary follows.
#
#   bash bench/gpu_check.sh [WHEEL_DIR]     wheels to install first (liger-kernel, trl, datasets, ...),
#                                           also taken from $TUNEHOUSE_WHEELS; no network is used
#   bash bench/gpu_check.sh --cpu-smoke     the same three runs at toy sizes on the CPU, to test the
#                                           script itself (about a minute on two idle cores)
#
# Results go to $OUT/gpu_check when $OUT is set, else bench-results/gpu_check. Per-run time limits
# (seconds) can be changed with GPU_CHECK_LIMIT_FULL, GPU_CHECK_LIMIT_LORA, GPU_CHECK_LIMIT_8B.
set -uo pipefail
cd "$(dirname "$0")/.."

mode=gpu
wheels="${TUNEHOUSE_WHEELS:-}"
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) mode=smoke ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    -*) echo "gpu_check: unknown option $arg" >&2; exit 2 ;;
    *) wheels="$arg" ;;
  esac
done

py="${PYTHON:-python3}"
results="${OUT:-$PWD/bench-results}/gpu_check"
mkdir -p "$results"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
started=$SECONDS

if [ -n "$wheels" ]; then
  if [ ! -d "$wheels" ]; then
    echo "gpu_check: wheel directory $wheels does not exist" >&2
    exit 2
  fi
  shopt -s nullglob
  files=("$wheels"/*.whl)
  shopt -u nullglob
  if [ ${#files[@]} -gt 0 ]; then
    echo "== installing ${#files[@]} wheel(s) from $wheels"
    # Only what the directory holds (no index); a system Python may be marked externally managed.
    if ! PIP_BREAK_SYSTEM_PACKAGES=1 "$py" -m pip install -q --no-index --find-links "$wheels" "${files[@]}"; then
      echo "gpu_check: installing with dependencies failed; installing the wheels alone" >&2
      PIP_BREAK_SYSTEM_PACKAGES=1 "$py" -m pip install -q --no-index --no-deps "${files[@]}" ||
        echo "gpu_check: some wheels did not install; the runs below say what is missing" >&2
    fi
  fi
fi

# What the runs need, and what each missing piece costs.
"$py" - <<'EOF' | tee "$results/environment.txt"
import importlib, importlib.metadata, platform
import torch
print(f"python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}")
for name, why in [
    ("transformers", "everything"), ("peft", "the LoRA runs"), ("pydantic", "our trainer"),
    ("psutil", "the bench"), ("accelerate", "the HF Trainer peers"), ("trl", "the TRL peer"),
    ("datasets", "the TRL peer"), ("liger_kernel", "our fused linear cross-entropy on CUDA"),
    ("flash_attn", "flash attention (else torch's varlen kernel)"), ("triton", "torch.compile on CUDA"),
]:
    try:
        importlib.import_module(name)
        version = importlib.metadata.version(name.replace("_", "-"))
        print(f"  {name:<13} {version}")
    except Exception as exc:
        print(f"  {name:<13} MISSING ({type(exc).__name__}) - needed for {why}")
EOF

has() { "$py" -c "import $1" >/dev/null 2>&1; }
peers="hf_padding_free"
if has trl && has datasets; then peers="$peers,trl_sft_packed"; fi
if ! has accelerate; then peers=""; fi
with_peers="tunehouse${peers:+,$peers}"

if [ "$mode" = smoke ]; then
  small=(--hidden 64 --layers 2 --vocab 512 --batch 4 --median-len 48 --max-len 256 --steps 3 --warmup 1)
  qwen=("${small[@]}")
  llama=(--family llama "${small[@]}")
  with_peers="tunehouse${peers:+,hf_padding_free}"  # one peer is enough to test the plumbing
  limit_full=900 limit_lora=900 limit_8b=900  # a shared CPU can be slow
else
  # About 10k real tokens per optimizer step in one micro-batch for the 0.5B shape.
  qwen=(--shape qwen2.5-0.5b --batch 16 --median-len 450 --max-len 2048 --steps 8 --warmup 3)
  # Eight examples of ~520 tokens on average: packed micro-batches of about 4,096 tokens.
  llama=(--shape llama3-8b --batch 8 --median-len 380 --max-len 4096 --steps 6 --warmup 2)
  limit_full="${GPU_CHECK_LIMIT_FULL:-170}" limit_lora="${GPU_CHECK_LIMIT_LORA:-140}"
  limit_8b="${GPU_CHECK_LIMIT_8B:-170}"
fi

run() { # name, time limit, bench arguments...
  local name="$1" limit="$2"
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$py" bench/trainer_throughput.py --out "$results/$name.json" "$@" \
    >"$results/$name.log" 2>&1
  local code=$?
  grep -v "^{" "$results/$name.log" | tail -n 8
  [ $code -eq 0 ] || echo "   $name exited with $code (log: $results/$name.log)"
}

# The 0.5B comparisons on chat SFT data (loss on the replies only); the 8B run on documents with every
# token learned, like the packed runs NeMo's figure comes from. One scenario each: the JSON keeps its
# fields at the top level, as the summary reads them.
run qwen05b_full "$limit_full" "${qwen[@]}" --scenario chat --method full --runs "$with_peers"
run qwen05b_lora "$limit_lora" "${qwen[@]}" --scenario chat --method lora --runs "$with_peers"
run llama8b_lora "$limit_8b" "${llama[@]}" --scenario text --method lora --runs tunehouse

"$py" - "$results" <<'EOF' | tee "$results/summary.txt"
import json, sys
from pathlib import Path

NEMO_8B_LORA = 12473  # tokens/s, Llama-3-8B LoRA, seq 4096 packed, one H100 (NeMo AutoModel)
root = Path(sys.argv[1])
print("== summary")
for name in ("qwen05b_full", "qwen05b_lora", "llama8b_lora"):
    path = root / f"{name}.json"
    if not path.is_file():
        print(f"{name}: no result")
        continue
    r = json.loads(path.read_text())
    print(f"{name}: {r['model']}, {r['method']}, {r['device']}, torch {r['torch']}, "
          f"transformers {r['transformers']}, {r['timed_tokens']} timed tokens")
    for run, m in r["runs"].items():
        mfu = f"{m['mfu']:.1%}" if m.get("mfu") is not None else "-"
        print(f"  {run:<16} {m['tokens_per_s']:>10.0f} tok/s  MFU {mfu:>6}  peak {m['peak_mem_mb']:>8.0f} MB"
              f"  final loss {m['final_loss']:.4f}")
    for run, why in r.get("failed", {}).items():
        print(f"  {run:<16} failed: {why}")
    for key, v in r.get("ours_over_peer", {}).items():
        print(f"  ours / {v['peer']}: {v['ratio']} ({key})")
    if name == "llama8b_lora" and "tunehouse" in r["runs"]:
        ours = r["runs"]["tunehouse"]["tokens_per_s"]
        print(f"  ours / NeMo AutoModel's {NEMO_8B_LORA} tok/s: {ours / NEMO_8B_LORA:.3f}")
EOF
echo "gpu_check: done in $((SECONDS - started))s, results in $results"
