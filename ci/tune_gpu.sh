#!/usr/bin/env bash
# Issue 12 on a CUDA machine: `opsctl tune` of preset qwen2.5-7b for one card profile per call:
#   bash ci/tune_gpu.sh rtx4090     # 24 GiB emulated on the bigger card: what fits matches an RTX 4090
#   bash ci/tune_gpu.sh h200
# WORKLOAD (default batch: 1024 prompt / 256 output tokens, TTFT p99 <= 30 s, TPOT p99 <= 200 ms) is where
# the cache's size decides the speed: a 24 GiB card's 16-bit cache holds ~91 such requests at once, an
# H200's ~1,400. Measured: chat (512 / 256) fits both cards alike, and rag (3072 / 256) is bound by its
# TTFT limit at ~34 streams on the 4090 whatever the weight format.
# KV_BATCH=1 tunes the same small space on any card: KV cache 16-bit or int8 x batch cap 128 or 256 (the
# card's own default batch is dropped from the axis), other axes pinned, loads of 64-256 streams, no
# perplexity: 3-4 configurations, 3-4 minutes. The committed reports/examples/tune-{rtx4090,h200} ran
# KV_BATCH=1 BUDGET=4 (3 trials each before the budget).
# EXTRA adds tune options (--axis NAME=V1,V2 replaces an axis).
# Each tune stops starting trials after $BUDGET minutes (default 6) so that one call fits the device
# machine's 10-minute limit; a cut-short tune resumes with RESUME=1 (finished trials are kept). The
# budget counts each trial's set-up too (a restart ~35 s on an H200, a probe 45-60 s): BUDGET=1.5 ran
# one trial of two (reports/examples/rtx4090-decode-t01); to run a small space whole, give BUDGET room
# and let LIMIT (seconds, default 540) be the hard stop.
# Results: reports/tune-gpu-<profile>/ (tune.json, trials.csv, report.html, launch.sh, deploy.yaml,
# the bench folders of every load probe, the servers' logs), packed without the bench folders into
# $OUT/tune-<profile>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
PROFILE=${1:?usage: bash ci/tune_gpu.sh PROFILE}
MODEL=${MODEL:-preset:qwen2.5-7b}
BUDGET=${BUDGET:-6}
WORKLOAD=${WORKLOAD:-batch}
RUN=tune-gpu-$PROFILE
export PYTHONUNBUFFERED=1
args=(tune "$MODEL" --gpu "$PROFILE" --workload "$WORKLOAD" --budget-minutes "$BUDGET" -o reports)
if [ "${KV_BATCH:-0}" = 1 ]; then
    args+=(--output-len 256 --max-streams 256 --initial-streams 64 --no-quality --axis model_format=hf
           --axis quant_policy=8 --axis max_batch_size=128,256 --axis cache_max_entry_count=0.8
           --axis max_prefill_token_num=8192 --axis enable_prefix_caching=off)
fi
if [ "${RESUME:-0}" = 1 ] && [ -f "reports/$RUN/tune.json" ]; then
    args+=(--resume "$RUN")
else
    rm -rf "reports/$RUN"
    args+=(--run-id "$RUN")
fi
# Ctrl-C (SIGINT) before the device call's own limit: the tune stops its server and keeps its finished
# trials, so what it measured is packed below and RESUME=1 continues it.
timeout -s INT -k 30 "${LIMIT:-540}" python3 -m toolkit "${args[@]}" ${EXTRA:-} 2>&1 | tee "reports/$RUN.log"
code=${PIPESTATUS[0]}
echo "opsctl tune exit code $code"
if [ -n "${OUT:-}" ]; then
    cp "reports/$RUN.log" "reports/$RUN/run.log" 2>/dev/null
    # The bench folders (every request of every probe) are left out: with rag's ladders they overflow
    # what a device call brings back; tune.json and trials.csv hold each probe's figures.
    tar czf "$OUT/tune-$PROFILE.tgz" --exclude="$RUN/bench" --exclude=plotly.min.js -C reports "$RUN"
fi
exit 0
