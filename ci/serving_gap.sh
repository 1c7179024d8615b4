#!/usr/bin/env bash
# The server against the plain engine on a CUDA machine, in one run (issue 11), for C = 64 and 256
# concurrent streams of 512 prompt / 256 output tokens (greedy, EOS ignored, preset qwen2.5-7b):
#   1. python -m toolkit.bench.http_vs_offline: the plain engine (all requests at once,
#      max_batch_size = C), the closed loop, and the HTTP path with its own multi-process clients;
#   2. `opsctl serve` + `opsctl bench --url` (Locust) on the same workload, as a user runs them;
#   3. `opsctl bench --url` against the fake server at 256 streams, 4 ms between tokens (> 50k
#      token events/s), whose /stats is the truth the bench is checked against.
# Results land in $RESULTS (default reports/serving-gap): JSON per step and a log.
#   usage: bash ci/serving_gap.sh [MODEL]
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-preset:qwen2.5-7b}
RESULTS=${RESULTS:-reports/serving-gap}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1

wait_healthy() {  # URL PID
    for _ in $(seq 1 240); do
        python3 -c "import httpx, sys; sys.exit(httpx.get(sys.argv[1] + '/health', timeout=1).status_code != 200)" \
            "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}

for C in 64 256; do
    N=$((4 * C))
    echo "== http_vs_offline, $C streams"
    timeout 240 python3 -m toolkit.bench.http_vs_offline --model "$MODEL" --concurrency "$C" --input-len 512 \
        --output-len 256 --num-requests "$N" --max-batch-size "$C" --out "$RESULTS/http_vs_offline-c$C.json" \
        2>&1 | grep -v -i warning | tail -6

    echo "== opsctl serve + opsctl bench --url (Locust), $C streams"
    PORT=$((24000 + C))
    python3 -m toolkit serve "$MODEL" --max-batch-size "$C" --session-len 832 --server-port "$PORT" \
        --log-level warning > "$RESULTS/serve-c$C.log" 2>&1 &
    SERVE=$!
    if wait_healthy "http://127.0.0.1:$PORT" "$SERVE"; then
        timeout 180 python3 -m toolkit bench --url "http://127.0.0.1:$PORT" --endpoint completions --dataset random \
            --input-len 512 --output-len 256 --num-requests "$N" --concurrency "$C" --ignore-eos --temperature 0 \
            --run-id "locust-c$C" -o "$RESULTS" --no-report 2>&1 | tail -8
    else
        echo "serve did not come up"; tail -5 "$RESULTS/serve-c$C.log"
    fi
    kill -TERM "$SERVE" 2>/dev/null; wait "$SERVE" 2>/dev/null
done

echo "== opsctl bench --url against the fake server: 256 streams, 50 ms TTFT, 4 ms ITL, 256 tokens"
python3 -m toolkit.bench.fake_server --port 24999 --ttft-ms 50 --itl-ms 4 --output-len 256 --workers 8 \
    > "$RESULTS/fake-server.log" 2>&1 &
FAKE=$!
if wait_healthy "http://127.0.0.1:24999" "$FAKE"; then
    timeout 120 python3 -m toolkit bench --url http://127.0.0.1:24999 --endpoint completions --dataset random \
        --input-len 64 --output-len 256 --num-requests 2048 --concurrency 256 --ignore-eos \
        --run-id fake-c256 -o "$RESULTS" --no-report 2>&1 | tail -8
    python3 -c "import httpx; print(httpx.get('http://127.0.0.1:24999/stats', timeout=10).text)" \
        > "$RESULTS/fake-server-stats.json"
fi
kill -TERM "$FAKE" 2>/dev/null; wait "$FAKE" 2>/dev/null
exit 0
