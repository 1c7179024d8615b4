#!/usr/bin/env bash
# The GPU checks behind the committed H100 figures (reports/examples/h100/), in one command.
# Run on a CUDA machine from the repository root: bash ci/gpu_targets.sh [OUT_DIR]
#   1. kernel tests and the engine's GPU tests (bf16 greedy vs transformers, kernels + graphs vs
#      the torch reference with margins);
#   2. the issue-4 targets on preset:qwen2.5-7b with peers in the same run: (a) decode-b1,
#      (b) throughput, (c) long-context, (d) ttft, (e) shared-prefix;
#   3. the HTTP server (engine in its own process, and in a thread) against the offline engine at
#      64 streaming clients;
#   4. where a decode step's time goes (host phases, GPU kernels).
# Results land in OUT_DIR (default reports/gpu-<time>) as result.json + CSV + report.html each.
set -uo pipefail
out=${1:-reports/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
model=preset:qwen2.5-7b
status=0
run() { echo "+ $*"; "$@" || status=1; }

run python3 -m pytest -m gpu -q -s tests/kernels tests/engine/test_gpu.py tests/engine/test_gpu_fastpath.py
run python3 -m toolkit bench offline $model --workload decode-b1 --peer generate --peer generate-static \
    -o "$out" --run-id decode-b1
run python3 -m toolkit bench offline $model --workload throughput -o "$out" --run-id throughput
run python3 -m toolkit bench offline $model --workload throughput --num-requests 64 --peer generate-batch \
    -o "$out" --run-id throughput-64-peer
run python3 -m toolkit bench offline $model --workload long-context -o "$out" --run-id long-context
run python3 -m toolkit bench offline $model --workload ttft -o "$out" --run-id ttft
run python3 -m toolkit bench offline $model --workload shared-prefix -o "$out" --run-id shared-prefix
run python3 -m toolkit bench offline $model --workload shared-prefix --deterministic -o "$out" \
    --run-id shared-prefix-deterministic
run python3 -m toolkit bench offline preset:qwen3-0.6b --workload shared-prefix -o "$out" --run-id shared-prefix-qwen3
run python3 -m toolkit.bench.http_vs_offline --model $model --concurrency 64 --input-len 512 --output-len 256 \
    --backend both --out "$out/http_vs_offline.json"
run python3 -m toolkit.bench.profile_step $model --batch 1 256 --context 512 --json "$out/profile_step.json"
run python3 -m engine.kernels.bench --json "$out/kernel_bench.json"
run python3 -m engine.kernels.bench --only gemv --sweep --json "$out/kernel_bench_gemv.json"
echo "results in $out"
exit $status
