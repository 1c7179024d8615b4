#!/usr/bin/env bash
# The server against the plain engine on a CUDA machine, in one run (issue 11), for C = 64 and 256
# concurrent streams of 512 prompt / 256 output tokens (greedy, EOS ignored, preset qwen2.5-7b):
#   1. python -m toolkit.bench.http_vs_offline, per C: the plain engine (all requests at once,
#      max_batch_size = C) on the prompts of `opsctl bench --dataset random`, then `opsctl serve`
#      with the same engine config driven by `opsctl bench --url` (Locust) with the same prompts;
#      its JSON holds both figures and their ratio, the bench's folder is locust-c$C/;
#   2. `opsctl bench --url` against the fake server at 256 streams, 4 ms between tokens (> 50k
#      token events/s), whose /stats is the truth the bench is checked against.
# Results land in $RESULTS (default reports/serving-gap): JSON per step, the bench folders, logs;
# with $OUT set (the device machine's output folder) also as $OUT/serving-gap.tgz, refreshed after
# every step so a run cut short still brings back what it measured.
#   usage: bash ci/serving_gap.sh [MODEL]
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-preset:qwen2.5-7b}
RESULTS=${RESULTS:-reports/serving-gap}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1

pack() {
    [ -n "${OUT:-}" ] || return 0
    tar czf "$OUT/serving-gap.tgz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
}

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
    echo "== http_vs_offline: plain engine, then opsctl serve + opsctl bench --url (Locust), $C streams"
    # SIGTERM from timeout stops the tool's server and Locust processes (it handles it as Ctrl-C).
    timeout -k 20 240 python3 -m toolkit.bench.http_vs_offline --model "$MODEL" --concurrency "$C" \
        --input-len 512 --output-len 256 --num-requests $((4 * C)) --bench-dir "$RESULTS" \
        --bench-run-id "locust-c$C" --out "$RESULTS/http_vs_offline-c$C.json" \
        > "$RESULTS/http_vs_offline-c$C.log" 2>&1
    echo "exit code $?"
    grep -v -i warning "$RESULTS/http_vs_offline-c$C.log" | grep -E "tok/s|HTTP reached|error" | tail -6
    pack
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

echo "== summary (output tok/s)"
python3 - "$RESULTS" <<'EOF'
import json, sys
from pathlib import Path

for path in sorted(Path(sys.argv[1]).glob("http_vs_offline-c*.json"), key=lambda p: int(p.stem.split("-c")[1])):
    d = json.loads(path.read_text())
    plain, http = d["plain_engine"], d["http"]
    print(f"C={d['config']['concurrency']}: plain engine {plain['output_tok_s']:,.1f}, serve + bench "
          f"{http['output_tok_s']:,.1f} = {d['ratio_http_over_plain']:.3f} (goal {d['goal']}); "
          f"client saturated {http['client_saturated']}, client CPU {http['client_process_cpu']}, "
          f"API process CPU {http['api_process_cpu']}, engine process CPU {http['engine_process_cpu']}, "
          f"prompts identical {http['prompts_identical']}")
EOF
pack
exit 0
