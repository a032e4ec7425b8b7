#!/usr/bin/env bash
# One prepared GPU measurement (issue: mmlc bench): the videollm-online-8b layout (SigLIP-L/384 +
# Llama-3-8B, 1 + 3x3 tokens a frame) with random bf16 weights, streaming a synthetic 2 fps video of
# 5 minutes (with every baseline) and of 60 minutes (KV length and memory over time), on one NVIDIA GPU.
# Budget: under 8 minutes on an H100/H200 class GPU. Usage: benchmarks/gpu_check.sh OUT_DIR
# Needs the project installed with a CUDA build of torch: pip install -e .
# "With compression": the stream runs with the preset's memory bridge (VideoLLaMB sizes, random weights:
# speed and memory only); the no_memory baseline is the same model keeping every frame in the KV cache.
set -euo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
python - <<'PY' > "$OUT/device.json"
import json, torch
assert torch.cuda.is_available(), "no CUDA device visible to torch: install a CUDA build of torch"
p = torch.cuda.get_device_properties(0)
print(json.dumps({"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1), "torch": torch.__version__,
                  "cuda": torch.version.cuda}))
PY
cat "$OUT/device.json"
COMMON=(--preset videollm-online-8b --init random --device cuda --dtype bfloat16 --size 384 --no-progress)
# 5 minutes = 600 frames, all baselines (interleaved sampled at 6 positions)
timeout 220 mmlc bench "${COMMON[@]}" --minutes 5 --samples 6 \
    --json "$OUT/8b-5min.json" --plot "$OUT/8b-5min.png" || echo "5-minute run failed or timed out" >&2
# 60 minutes = 7,200 frames with memory; the no-memory and interleaved baselines over its first 20 minutes
timeout 260 mmlc bench "${COMMON[@]}" --minutes 60 --baselines interleaved,no_memory --baseline-minutes 20 --samples 4 \
    --json "$OUT/8b-60min.json" --plot "$OUT/8b-60min.png" || echo "60-minute run failed or timed out" >&2
python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = ["| run | frames/s | p50 ms | p99 ms | first token ms | per token ms | KV end | peak CUDA MB | "
        "interleaved x | per-frame x | no-memory fps (KV end) | weight-read bound fps |", "|" + "---|" * 12]
for name in ("8b-5min", "8b-60min"):
    f = out / f"{name}.json"
    if not f.exists():
        rows.append(f"| {name} | (no result) |" + " |" * 10)
        continue
    r = json.loads(f.read_text()); s = r["stream"]; b = r["baselines"]
    rows.append(f"| {name} | {s['fps']} | {s['frame_latency_ms']['p50']} | {s['frame_latency_ms']['p99']} | "
                f"{s['reply_first_token_ms']['p50']} | {s['reply_per_token_ms']['p50']} | {s['kv_length_final']} | "
                f"{s.get('peak_cuda_mb')} | {b.get('interleaved', {}).get('speedup')} | "
                f"{b.get('per_frame', {}).get('speedup')} | {b.get('no_memory', {}).get('fps')} "
                f"({b.get('no_memory', {}).get('kv_length_final')}) | {(r['bound'] or {}).get('weight_read_bound_fps')} |")
(out / "table.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
