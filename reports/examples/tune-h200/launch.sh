#!/usr/bin/env bash
# Written by `opsctl tune`: serves the model with the configuration the tune chose.
# Model: preset:qwen2.5-7b
# Tuned for: profile h200, 141 GiB per card, weights 14.1852 GiB
# Engine settings: --quant-policy 8
# Arguments given to this script are added to `opsctl serve` (a repeated flag takes the last value),
# e.g. --server-name 127.0.0.1 or --api-key-file FILE; $OPSCTL_API_KEY is read too.
set -euo pipefail

exec opsctl serve preset:qwen2.5-7b --quant-policy 8 --server-name 0.0.0.0 --server-port 23333 "$@"

# The closest LMDeploy command (not run):
#   lmdeploy serve api_server preset:qwen2.5-7b --quant-policy 8 --server-name 0.0.0.0 --server-port 23333
#   - --max-batch-size (unset): left to LMDeploy, which picks by GPU as opsctl does but with its own
#     table; pass --max-batch-size to pin it
#   - --max-prefill-token-num 8192: LMDeploy's --max-prefill-token-num budgets the prefill tokens of
#     a step; opsctl's counts the step's decode tokens too
#   - --dtype auto: auto: opsctl picks float16 for float16 checkpoints, bfloat16 otherwise on CUDA
#     and float32 on CPU; LMDeploy follows the checkpoint and may pick differently for float32 ones:
#     pass --dtype to pin it
#
# The closest vLLM command (not run):
#   vllm serve preset:qwen2.5-7b --gpu-memory-utilization 0.82 --block-size 64 --max-num-batched-tokens 8192 --no-enable-prefix-caching --kv-cache-dtype fp8 --seed 0 --host 0.0.0.0 --port 23333
#   - --max-batch-size (unset): left to vLLM, whose default --max-num-seqs depends on its version
#     and the GPU; pass --max-num-seqs to pin it
#   - --cache-max-entry-count 0.8: --gpu-memory-utilization 0.82 = (W + r x (C - W)) / M with W =
#     14.1852 GiB of weights per GPU, M = 141 GiB card, C = M, r = 0.8: vLLM's is the fraction of
#     the whole card for weights, activations and KV cache, so its KV cache comes out smaller by its
#     activation peak
#   - --cache-block-seq-len 64: vLLM's attention backends accept only some block sizes
#     (FlashAttention: multiples of 16; older CUDA builds up to 32); if vLLM refuses 64, use 16 or
#     32
#   - --quant-policy 8: vLLM has no int8 KV cache: fp8 (e4m3) takes the same memory, with different
#     rounding than opsctl's/LMDeploy's int8
#   - --dtype auto: auto: opsctl picks float16 for float16 checkpoints, bfloat16 otherwise on CUDA
#     and float32 on CPU; vLLM follows the checkpoint and may pick differently for float32 ones:
#     pass --dtype to pin it
