#!/usr/bin/env bash
# Issue 12's "full grid of one small space beside the tuner's search" on a CUDA machine: preset qwen2.5-7b
# for rtx4090 (24 GiB emulated), 256 prompt / 64 output tokens, SLO TTFT p90 <= 500 ms and TPOT p90 <= 50 ms,
# every configuration of a 24-configuration space measured (--search grid), then the tuner's coordinate
# search replayed on those measurements (python -m toolkit.tune.replay: its choice against the grid's
# best, and its share of the grid's trials). The space:
#   max_batch_size 16 (the base), 32, 64  x  cache_max_entry_count 0.8, 0.1  x  max_prefill_token_num 8192, 512
#   x  enable_prefix_caching off, on;  model_format and quant_policy pinned (hf, 0): the GPU space would
#   otherwise add int8/AWQ weights and the int8 KV cache, 144 configurations and a restart per format.
# The base batch cap of 16 makes the search climb (the default, 128, would already be the best), and a
# 0.1 cache holds ~40 such requests in 24 GiB, fewer than 64 streams.
#   bash ci/tune_grid_gpu.sh      starts reports/grid-gpu-rtx4090, or resumes it where it holds tune.json:
#                                 between device calls, unpack the last call's $OUT/grid-gpu-rtx4090.tgz into
#                                 reports/ here and carry "reports/grid-gpu-rtx4090" (finished trials are kept).
# One call stops starting trials after $BUDGET minutes (default 7) to fit the machine's 10-minute limit.
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-preset:qwen2.5-7b}
BUDGET=${BUDGET:-7}
RUN=grid-gpu-rtx4090
export PYTHONUNBUFFERED=1
# A resume takes the same options (opsctl tune refuses another model, card or space for a stored run).
args=(tune "$MODEL" --gpu rtx4090 --search grid --input-len 256 --output-len 64
      --slo ttft_p90_ms=500,tpot_p90_ms=50 --max-batch-size 16 --session-len 2048
      --axis model_format=hf --axis quant_policy=0 --axis max_batch_size=32,64
      --axis cache_max_entry_count=0.1 --axis max_prefill_token_num=512 --axis enable_prefix_caching=off,on
      --max-streams 64 --initial-streams 16 --min-requests 64 --no-quality -o reports)
if [ -f "reports/$RUN/tune.json" ]; then
    args+=(--resume "$RUN")
else
    rm -rf "reports/$RUN"
    args+=(--run-id "$RUN")
fi
mkdir -p "reports/$RUN"
# --budget-minutes stops starting trials; SIGINT before the call's own limit stops a trial midway and keeps
# the finished ones (the tune stops its server), so what was measured is packed below either way.
timeout -s INT -k 30 "${LIMIT:-560}" python3 -m toolkit "${args[@]}" --budget-minutes "$BUDGET" 2>&1 \
    | tee -a "reports/$RUN/run.log"
echo "opsctl tune exit code ${PIPESTATUS[0]}"
if python3 -m toolkit.tune.replay "reports/$RUN" --json "reports/$RUN/replay.json" > "reports/$RUN/replay.txt" 2>&1; then
    cat "reports/$RUN/replay.txt"
else
    echo "replay: $(tail -1 "reports/$RUN/replay.txt") (the grid is not finished: resume it)"
fi
[ -n "${OUT:-}" ] && tar czf "$OUT/$RUN.tgz" -C reports "$RUN"
exit 0
