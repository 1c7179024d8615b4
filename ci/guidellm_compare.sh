#!/usr/bin/env bash
# Issue 11: `opsctl bench --url` (Locust) against GuideLLM 0.8.x (a peer client), run one after the
# other at the same concurrency against the same servers, compared on output tok/s, TTFT and ITL:
#   1. GuideLLM's own mock server (`guidellm mock-server`: TTFT_MS, ITL_MS, 64 output tokens),
#      MOCK_C streams, MOCK_N requests per tool, REPS repetitions (the order of the two tools
#      alternates between repetitions, so a drift of the shared machine is not blamed on one tool);
#      a fresh mock server per run, its Sanic access log kept as the server's side of each run;
#   2. `opsctl serve` (the embedded SmolLM2-135M on CPU), SERVE_C streams, SERVE_N requests per tool.
# Every request: a random/synthetic prompt of 64-128 tokens (SmolLM2's tokenizer), 64 output tokens,
# ignore_eos (GuideLLM sends ignore_eos + stop=null + max_tokens whenever output_tokens is set),
# streamed /v1/completions.
# GuideLLM must live in its own virtualenv (never the project's):
#   python3 -m venv /tmp/gllm && /tmp/gllm/bin/pip install 'guidellm==0.8.*'
#   usage: bash ci/guidellm_compare.sh [GUIDELLM_VENV]      (or GUIDELLM_VENV=/tmp/gllm)
# Output: $RESULTS (default /tmp/guidellm-compare): each tool's own files and logs; the comparison
# table on stdout and as JSON in $OUT_JSON (default reports/examples/cpu/guidellm_compare.json).
# Knobs (env): MOCK_C=32 MOCK_N=960 REPS=2 TTFT_MS=100 ITL_MS=10 SERVE_C=4 SERVE_N=40 SKIP_SERVE=0
#   MOCK_STD="TTFT_STD_MS ITL_STD_MS" (jitter in the mock: desynchronizes closed-loop users);
#   SERVE_ORDER="opsctl guidellm" (which tool goes first against opsctl serve);
#   OPSCTL_WARMUP=N (opsctl's --warmup; GuideLLM runs none here; default: opsctl's, min(C, 4));
#   ANALYZE_ONLY=1 (no runs: rebuild the table and JSON from $RESULTS).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GVENV=${1:-${GUIDELLM_VENV:-/tmp/gllm}}
GLLM="$GVENV/bin/guidellm"
OPSCTL="$ROOT/.venv/bin/opsctl"
PY="$ROOT/.venv/bin/python"
RESULTS=${RESULTS:-/tmp/guidellm-compare}
OUT_JSON=${OUT_JSON:-reports/examples/cpu/guidellm_compare.json}
MOCK_C=${MOCK_C:-32}; MOCK_N=${MOCK_N:-960}; REPS=${REPS:-2}; TTFT_MS=${TTFT_MS:-100}; ITL_MS=${ITL_MS:-10}
SERVE_C=${SERVE_C:-4}; SERVE_N=${SERVE_N:-40}; SKIP_SERVE=${SKIP_SERVE:-0}
OUT_LEN=64; IN_MIN=64; IN_MAX=128; IN_MEAN=96; IN_STD=16
TOK=${TOKENIZER:-$HOME/.cache/opsctl/models/SmolLM2-135M-Instruct}
MOCK_PORT=${MOCK_PORT:-18741}; SERVE_PORT=${SERVE_PORT:-18742}
[ -x "$GLLM" ] || { echo "no guidellm at $GLLM (pass the GuideLLM virtualenv)"; exit 2; }
[ -x "$OPSCTL" ] || { echo "no $OPSCTL"; exit 2; }
[ -d "$TOK" ] || { echo "no tokenizer directory $TOK (set TOKENIZER)"; exit 2; }
MOCK_STD=${MOCK_STD:-}; ANALYZE_ONLY=${ANALYZE_ONLY:-0}
export MOCK_C MOCK_N REPS TTFT_MS ITL_MS SERVE_C SERVE_N MOCK_STD
CMDS="$RESULTS/commands.tsv"
if [ "$ANALYZE_ONLY" != 1 ]; then
rm -rf "$RESULTS"; mkdir -p "$RESULTS" "$(dirname "$OUT_JSON")"
: > "$CMDS"   # label <TAB> command, for the JSON

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_up() {  # URL PATH PID
    for _ in $(seq 1 600); do
        curl -sf -o /dev/null "$1$2" && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}
stop() { kill -TERM "$1" 2>/dev/null; wait "$1" 2>/dev/null; }
record() { printf '%s\t%s\n' "$1" "$2" >> "$CMDS"; }

run_guidellm() {  # LABEL URL MODEL C N
    local cmd="$GLLM run --backend kind=openai_http,target=$2,model=$3,request_format=/v1/completions,timeout=600"
    cmd+=" --profile kind=concurrent,streams=$4 --constraint kind=max_requests,count=$5"
    cmd+=" --data kind=synthetic_text,prompt_tokens=$IN_MEAN,prompt_tokens_stdev=$IN_STD,prompt_tokens_min=$IN_MIN,prompt_tokens_max=$IN_MAX,output_tokens=$OUT_LEN"
    cmd+=" --tokenizer kind=huggingface_auto,model=$TOK --output kind=json,path=$RESULTS/$1-guidellm.json --disable-progress"
    record "$1-guidellm" "$cmd"
    echo "== $1: guidellm"
    (cd "$RESULTS" && timeout 900 $cmd > "$RESULTS/$1-guidellm.log" 2>&1) || echo "   guidellm failed: see $RESULTS/$1-guidellm.log"
}
run_opsctl() {  # LABEL URL MODEL C N
    local cmd="$OPSCTL bench --url $2 --model $3 --endpoint completions --dataset random --input-len $IN_MIN:$IN_MAX"
    cmd+=" --output-len $OUT_LEN --concurrency $4 --num-requests $5 --ignore-eos --tokenizer $TOK"
    cmd+=" --run-id $1-opsctl -o $RESULTS --no-report${OPSCTL_WARMUP:+ --warmup $OPSCTL_WARMUP}"
    record "$1-opsctl" "$cmd"
    echo "== $1: opsctl bench"
    timeout 900 $cmd > "$RESULTS/$1-opsctl.log" 2>&1 || echo "   opsctl bench failed: see $RESULTS/$1-opsctl.log"
}
mock_run() {  # LABEL TOOL
    local cmd="$GLLM mock-server --host 127.0.0.1 --port $MOCK_PORT --model mock-model --ttft-ms $TTFT_MS --itl-ms $ITL_MS --output-tokens $OUT_LEN"
    if [ -n "$MOCK_STD" ]; then set -- "$@" $MOCK_STD; cmd+=" --ttft-ms-std $3 --itl-ms-std $4"; fi
    record "$1-$2-server" "$cmd"
    $cmd > "$RESULTS/$1-$2-mock.log" 2>&1 &
    local pid=$!; PIDS+=("$pid")
    if wait_up "http://127.0.0.1:$MOCK_PORT" /v1/models "$pid"; then
        "run_$2" "$1" "http://127.0.0.1:$MOCK_PORT" mock-model "$MOCK_C" "$MOCK_N"
    else
        echo "mock server did not come up"; tail -5 "$RESULTS/$1-$2-mock.log"
    fi
    stop "$pid"
}

for r in $(seq 1 "$REPS"); do
    if [ $((r % 2)) -eq 1 ]; then order="guidellm opsctl"; else order="opsctl guidellm"; fi
    for tool in $order; do mock_run "mock-r$r" "$tool"; done
done

if [ "$SKIP_SERVE" != 1 ]; then
    cmd="$OPSCTL serve --server-port $SERVE_PORT --max-batch-size 8 --log-level warning"
    record "serve-server" "$cmd"
    echo "== opsctl serve (CPU) on :$SERVE_PORT"
    $cmd > "$RESULTS/serve.log" 2>&1 &
    SERVE=$!; PIDS+=("$SERVE")
    if wait_up "http://127.0.0.1:$SERVE_PORT" /health "$SERVE"; then
        MODEL=$(curl -s "http://127.0.0.1:$SERVE_PORT/v1/models" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
        echo "   model $MODEL"
        for tool in ${SERVE_ORDER:-guidellm opsctl}; do
            "run_$tool" serve "http://127.0.0.1:$SERVE_PORT" "$MODEL" "$SERVE_C" "$SERVE_N"
        done
    else
        echo "opsctl serve did not come up"; tail -5 "$RESULTS/serve.log"
    fi
    stop "$SERVE"
fi
fi  # ANALYZE_ONLY

"$PY" - "$RESULTS" "$OUT_JSON" "$GVENV" <<'EOF'
import json, os, platform, re, statistics, subprocess, sys, glob
results, out_json, gvenv = sys.argv[1:4]
env = dict(os.environ)

def pct(xs, q):
    xs = sorted(xs); k = (len(xs) - 1) * q; f = int(k); c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)

def guidellm(path):
    d = json.load(open(path)); b = d["benchmarks"][0]; m = b["metrics"]
    s = lambda k: m[k]["successful"]
    reqs = b["requests"]["successful"] if isinstance(b.get("requests"), dict) else []
    out_tokens = s("output_token_count")["total_sum"]
    return {
        "requests": s("request_latency")["count"],
        "duration_s": b["duration"],
        "output_tok_s": s("output_tokens_per_second")["mean"],           # GuideLLM's own figure
        "output_tok_s_total_over_duration": out_tokens / b["duration"],
        "ttft_ms_mean": s("time_to_first_token_ms")["mean"], "ttft_ms_p50": s("time_to_first_token_ms")["median"],
        # GuideLLM's ITL = (latency - TTFT) / (output tokens - 1) per request, weighted by tokens:
        # the same definition as our TPOT.
        "itl_ms_mean": s("inter_token_latency_ms")["mean"], "itl_ms_p50": s("inter_token_latency_ms")["median"],
        "tpot_ms_mean": s("time_per_output_token_ms")["mean"], "tpot_ms_p50": s("time_per_output_token_ms")["median"],
        "e2e_ms_mean": 1e3 * s("request_latency")["mean"], "e2e_ms_p50": 1e3 * s("request_latency")["median"],
    }

def opsctl(path):
    d = json.load(open(path)); s = d["runs"][0]["summary"]
    return {
        "requests": s["num_completed"], "duration_s": s["duration_s"],
        "output_tok_s": s["output_throughput"],
        "ttft_ms_mean": 1e3 * s["ttft"]["mean"], "ttft_ms_p50": 1e3 * s["ttft"]["p50"],
        # ours: itl = every gap between content chunks, pooled; tpot = (e2e - ttft) / (tokens - 1) per request
        "itl_ms_mean": 1e3 * s["itl"]["mean"], "itl_ms_p50": 1e3 * s["itl"]["p50"],
        "tpot_ms_mean": 1e3 * s["tpot"]["mean"], "tpot_ms_p50": 1e3 * s["tpot"]["p50"],
        "e2e_ms_mean": 1e3 * s["e2e"]["mean"], "e2e_ms_p50": 1e3 * s["e2e"]["p50"],
        "window_s": s.get("extra", {}).get("throughput_window_s"),
    }

def mock_log(path):
    """The mock's Sanic access log: one line per streamed request, its time being the server's time
    from the request to its first write (the first token): the server's own TTFT."""
    ms = [float(x) for x in re.findall(r"POST \S+/v1/completions 200 chunked\s+([\d.]+)ms", open(path).read())]
    return {"server_log_requests": len(ms), "server_ttft_ms_mean": statistics.fmean(ms),
            "server_ttft_ms_p50": pct(ms, 0.5)} if ms else {}

def herd(starts):
    """How synchronized the closed-loop users are: the mean number of other requests sent within
    +-5 ms of each request (0: spread out; C-1: all users in lockstep)."""
    import bisect
    st = sorted(starts)
    return sum(bisect.bisect_right(st, t + 0.005) - bisect.bisect_left(st, t - 0.005) - 1 for t in st) / max(len(st), 1)

def opsctl_starts(run_dir):
    import csv
    return [float(r["start_s"]) for f in glob.glob(f"{run_dir}/requests-*.csv") for r in csv.DictReader(open(f))
            if r.get("start_s")]

def guidellm_starts(path):
    b = json.load(open(path))["benchmarks"][0]
    return [r["info"]["timings"]["request_start"] for r in b["requests"]["successful"]]

# Like for like: output tok/s; TTFT; opsctl's TPOT against GuideLLM's ITL (same definition);
# opsctl's pooled chunk-gap ITL mean against GuideLLM's ITL mean (equal when every chunk is one token).
PAIRS = [("output tok/s", "output_tok_s", "output_tok_s"),
         ("TTFT mean ms", "ttft_ms_mean", "ttft_ms_mean"), ("TTFT p50 ms", "ttft_ms_p50", "ttft_ms_p50"),
         ("ITL mean ms (opsctl TPOT)", "tpot_ms_mean", "itl_ms_mean"),
         ("ITL p50 ms (opsctl TPOT)", "tpot_ms_p50", "itl_ms_p50"),
         ("ITL mean ms (opsctl ITL)", "itl_ms_mean", "itl_ms_mean"),
         ("E2E mean ms", "e2e_ms_mean", "e2e_ms_mean")]
comparisons = []
labels = sorted({os.path.basename(p).rsplit("-", 1)[0] for p in glob.glob(f"{results}/*-guidellm.json")})
for label in labels:
    try:
        g = guidellm(f"{results}/{label}-guidellm.json")
        o = opsctl(f"{results}/{label}-opsctl/result.json")
        o["starts_within_5ms"] = herd(opsctl_starts(f"{results}/{label}-opsctl"))
        g["starts_within_5ms"] = herd(guidellm_starts(f"{results}/{label}-guidellm.json"))
    except (OSError, KeyError, IndexError, ValueError) as e:
        print(f"{label}: missing result ({e})"); continue
    if label.startswith("mock"):
        for tool, res in (("guidellm", g), ("opsctl", o)):
            p = f"{results}/{label}-{tool}-mock.log"
            if os.path.exists(p): res.update(mock_log(p))
    rows = []
    for name, ok, gk in PAIRS:
        ratio = o[ok] / g[gk] if g.get(gk) else None
        rows.append({"metric": name, "opsctl": o[ok], "guidellm": g[gk], "ratio": ratio,
                     "within_5pct": ratio is not None and abs(ratio - 1) <= 0.05})
    comparisons.append({"label": label, "opsctl": o, "guidellm": g, "rows": rows})
    print(f"\n{label}  (opsctl/guidellm)")
    print(f"  {'metric':28s} {'opsctl':>10s} {'guidellm':>10s} {'ratio':>7s}  within 5%")
    for r in rows:
        print(f"  {r['metric']:28s} {r['opsctl']:10.2f} {r['guidellm']:10.2f} {r['ratio']:7.3f}  {'yes' if r['within_5pct'] else 'NO'}")
    if "server_ttft_ms_mean" in g and "server_ttft_ms_mean" in o:
        print(f"  mock's own TTFT (access log) mean/p50 ms: during opsctl {o['server_ttft_ms_mean']:.1f}/{o['server_ttft_ms_p50']:.1f},"
              f" during guidellm {g['server_ttft_ms_mean']:.1f}/{g['server_ttft_ms_p50']:.1f}")
    print(f"  other requests sent within +-5 ms of each (lockstep users): opsctl {o['starts_within_5ms']:.1f},"
          f" guidellm {g['starts_within_5ms']:.1f}")

def ver(cmd):
    try: return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip().splitlines()[-1]
    except Exception as e: return f"? ({e})"
commands = dict(line.rstrip("\n").split("\t", 1) for line in open(f"{results}/commands.tsv") if "\t" in line)
doc = {
    "issue": 11,
    "what": "opsctl bench --url (Locust) vs GuideLLM, one after the other, same servers, same concurrency",
    "script": "bash ci/guidellm_compare.sh " + gvenv,
    "versions": {"guidellm": ver([f"{gvenv}/bin/guidellm", "--version"]),
                 "opsctl_git_commit": ver(["git", "rev-parse", "HEAD"]), "python": platform.python_version()},
    "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None),
                "note": "2 CPU cores shared with other jobs; client and server on the same cores"},
    "settings": {k: env.get(k) for k in ("MOCK_C", "MOCK_N", "REPS", "TTFT_MS", "ITL_MS", "SERVE_C", "SERVE_N", "MOCK_STD")},
    "commands": commands,
    "comparisons": comparisons,
}
json.dump(doc, open(out_json, "w"), indent=1)
print(f"\nwrote {out_json}")
EOF
