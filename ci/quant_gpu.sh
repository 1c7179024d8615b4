#!/usr/bin/env bash
# Issue 13 on a CUDA machine, in one run, the bf16 engine as the peer of every quantized figure:
#   1. the W4A16 / W8A16 kernel tests (native Triton) and their microbenchmark against bf16 F.linear
#      (engine/kernels/quant_bench.py: us, GB/s of weight read, fraction of the copy bandwidth);
#   2. python -m toolkit.bench.formats on preset qwen2.5-7b (random weights; AWQ = them rounded to
#      4-bit g128 at load, int8 = per channel): decode-b1 and throughput at 64 requests for bf16, int8
#      and AWQ weights, throughput at 256 requests for the bf16 and the int8 KV cache; one engine load
#      per format.
# Results in $RESULTS (default reports/quant-gpu); with $OUT set, packed into $OUT/quant-gpu.tgz after
# every step, so a run cut short still brings back what it measured.
#   usage: bash ci/quant_gpu.sh [MODEL]
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-preset:qwen2.5-7b}
RESULTS=${RESULTS:-reports/quant-gpu}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1

pack() {
    [ -n "${OUT:-}" ] || return 0
    tar czf "$OUT/quant-gpu.tgz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
}

echo "== kernel tests (native Triton)"
timeout 240 python3 -m pytest -q -m gpu tests/kernels/test_quant_gemm.py tests/kernels/test_kv_int8.py 2>&1 \
    | tee "$RESULTS/kernel-tests.log" | tail -8
echo "== W4A16 / W8A16 against bf16 F.linear"
timeout 150 python3 -m engine.kernels.quant_bench --out "$RESULTS/quant_bench.json" 2>&1 \
    | tee "$RESULTS/quant_bench.log" | tail -40
pack
echo "== formats through the engine"
timeout 420 python3 -m toolkit.bench.formats "$MODEL" --out "$RESULTS/formats" 2>&1 \
    | grep -v -i warning | tee "$RESULTS/formats.log" | tail -30
pack
exit 0
