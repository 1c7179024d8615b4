#!/usr/bin/env bash
# Issue 11: `opsctl bench --url` (Locust) against GuideLLM 0.8.x (a peer client), run one after the
# other at the same concurrency against the same servers, compared on output tok/s, TTFT and ITL:
#   1. GuideLLM's own mock server (`guidellm mock-server`: TTFT_MS, ITL_MS, 64 output tokens),
#      MOCK_C streams, MOCK_N requests per tool, REPS repetitions (the order of the two tools
#      alternates between repetitions, so a drift of the shared machine is not blamed on one tool),
#      then GLLM1_REPS more with GuideLLM in one worker process (GUIDELLM__MAX_WORKER_PROCESSES=1: its
#      default, up to 10 processes, keeps most of a core busy on this 2-core machine, which slows the
#      mock it measures and its own timestamps), then JITTER_REPS with jitter in the mock
#      (JITTER_STD), GuideLLM as by default; a fresh mock server per run, its
#      Sanic access log kept as the server's side of each run; opsctl with its default warm-up
#      (min(C, 4)), whose mean time its users' first sends are spread over;
#   2. `opsctl serve` (SERVE_MODEL: the embedded SmolLM2-135M by default), SERVE_C streams, SERVE_N requests per tool,
#      SERVE_REPS repetitions (order alternating, as above), opsctl --warmup SERVE_WARMUP: GuideLLM
#      runs no warm-up and its streams start together, so with --warmup 0 opsctl's do too (no
#      warm-up time to spread them over) and both tools load the batching server with the same
#      waves. On this shared 2-core machine a wave of 4 64-token requests took 20-75 s beside other
#      jobs (~5 s at a quiet moment), so SERVE_N=12 (3 waves) took 2-4 min per tool; SERVE_N=40 once
#      took ~25 min.
# Every request: a random/synthetic prompt of 64-128 tokens (SmolLM2's tokenizer), 64 output tokens,
# ignore_eos (GuideLLM sends ignore_eos + stop=null + max_tokens whenever output_tokens is set),
# streamed /v1/completions.
# GuideLLM must live in its own virtualenv (never the project's):
#   python3 -m venv /tmp/gllm && /tmp/gllm/bin/pip install torch==2.13.0 'guidellm==0.8.*'
#   usage: bash ci/guidellm_compare.sh [GUIDELLM_VENV]      (or GUIDELLM_VENV=/tmp/gllm)
# Output: $RESULTS (default /tmp/guidellm-compare): each tool's own files and logs; the comparison
# table on stdout and as JSON in $OUT_JSON (default reports/examples/cpu/guidellm_compare.json):
# the settings, commands, every comparison, a runs_note composed from the settings, and findings:
# one measured line per comparison (rows more than 5% apart, the users' herding, the mock's own
# TTFT under each tool), after the lines of $FINDINGS_FILE (JSON list of strings: what a person
# concluded from the runs) when given.
# Knobs (env): MOCK_C=32 MOCK_N=960 REPS=2 TTFT_MS=100 ITL_MS=10 GLLM1_REPS=2 JITTER_REPS=1 JITTER_STD="10 2"
#   SERVE_C=4 SERVE_N=12 SERVE_REPS=2 SERVE_WARMUP=0 SKIP_SERVE=0
#   MOCK_STD="TTFT_STD_MS ITL_STD_MS" (jitter in every mock run, not only the JITTER_REPS ones);
#   OPSCTL_WARMUP=N (opsctl's --warmup against the mock; default: opsctl's, min(C, 4));
#   SERVER_CPUS=0 CLIENT_CPUS=1 (taskset: the servers on some cores, the tools on others, so a
#   client's own CPU use does not slow the server it measures; default: no pinning: GuideLLM's
#   processes pinned to one of the 2 cores here starved, TTFT 220 ms against the mock's 110);
#   FINDINGS_FILE=path; ANALYZE_ONLY=1 (no runs: rebuild the table and JSON from $RESULTS);
#   SERVE_MODEL= (opsctl serve's model, e.g. preset:qwen2.5-7b; empty: the embedded default)
#   SERVE_FLAGS="--max-batch-size 8" SERVE_IN_LEN= (prompt tokens, fixed; empty: 64-128 as against the
#   mock) SERVE_OUT_LEN=64 SERVE_PREWARM=0 (requests sent before the first compared run, so first-request
#   costs land on neither tool) MACHINE_NOTE=text (the JSON's machine note) OPSCTL_BIN=path
#   PYTHON_BIN=path (default: the project's .venv; ci/guidellm_device.sh sets them on the GPU machine)
#   OPSCTL_GIT_COMMIT=sha (recorded where the tree is not a git checkout); GUIDELLM_RAMPUP_S= (GuideLLM's
#   streams' first requests spread over that many seconds, its rampup_duration, as opsctl's default
#   warm-up spreads its users' over a request time; with SERVE_WARMUP= empty opsctl keeps that default);
#   OPSCTL_THINK_MS= (opsctl bench --think-time-ms: its users wait 0..MS ms after each answer).
# Each tool run also records $RESULTS/<label>-<tool>-cpu.json: the tool's CPU seconds (every process
# of it) over its wall time, and the server's CPU and run-queue wait meanwhile (/proc schedstat of its
# threads): on a shared machine a client that keeps a core busy makes the server wait for a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GVENV=${1:-${GUIDELLM_VENV:-/tmp/gllm}}
GLLM="$GVENV/bin/guidellm"
OPSCTL=${OPSCTL_BIN:-$ROOT/.venv/bin/opsctl}
PY=${PYTHON_BIN:-$ROOT/.venv/bin/python}
RESULTS=${RESULTS:-/tmp/guidellm-compare}
OUT_JSON=${OUT_JSON:-reports/examples/cpu/guidellm_compare.json}
MOCK_C=${MOCK_C:-32}; MOCK_N=${MOCK_N:-960}; REPS=${REPS:-2}; TTFT_MS=${TTFT_MS:-100}; ITL_MS=${ITL_MS:-10}
JITTER_REPS=${JITTER_REPS:-1}; JITTER_STD=${JITTER_STD:-10 2}; GLLM1_REPS=${GLLM1_REPS:-2}; GLLM_WORKERS=
SERVE_C=${SERVE_C:-4}; SERVE_N=${SERVE_N:-12}; SERVE_REPS=${SERVE_REPS:-2}; SERVE_WARMUP=${SERVE_WARMUP-0}
SKIP_SERVE=${SKIP_SERVE:-0}; SERVER_CPUS=${SERVER_CPUS:-}; CLIENT_CPUS=${CLIENT_CPUS:-}
SERVE_MODEL=${SERVE_MODEL:-}; SERVE_FLAGS=${SERVE_FLAGS:---max-batch-size 8}; SERVE_IN_LEN=${SERVE_IN_LEN:-}
SERVE_OUT_LEN=${SERVE_OUT_LEN:-64}; SERVE_PREWARM=${SERVE_PREWARM:-0}; MACHINE_NOTE=${MACHINE_NOTE:-}
GUIDELLM_RAMPUP_S=${GUIDELLM_RAMPUP_S:-}; OPSCTL_THINK_MS=${OPSCTL_THINK_MS:-}
OUT_LEN=64; IN_MIN=64; IN_MAX=128; IN_MEAN=96; IN_STD=16
TOK=${TOKENIZER:-$HOME/.cache/opsctl/models/SmolLM2-135M-Instruct}
MOCK_PORT=${MOCK_PORT:-18741}; SERVE_PORT=${SERVE_PORT:-18742}
[ -x "$GLLM" ] || { echo "no guidellm at $GLLM (pass the GuideLLM virtualenv)"; exit 2; }
[ -x "$OPSCTL" ] || { echo "no $OPSCTL"; exit 2; }
[ -d "$TOK" ] || { echo "no tokenizer directory $TOK (set TOKENIZER)"; exit 2; }
MOCK_STD=${MOCK_STD:-}; ANALYZE_ONLY=${ANALYZE_ONLY:-0}; FINDINGS_FILE=${FINDINGS_FILE:-}
export MOCK_C MOCK_N REPS TTFT_MS ITL_MS JITTER_REPS JITTER_STD GLLM1_REPS SERVE_C SERVE_N SERVE_REPS SERVE_WARMUP MOCK_STD
export FINDINGS_FILE OPSCTL_WARMUP=${OPSCTL_WARMUP:-} SERVER_CPUS CLIENT_CPUS
export SERVE_MODEL SERVE_FLAGS SERVE_IN_LEN SERVE_OUT_LEN SERVE_PREWARM MACHINE_NOTE GUIDELLM_RAMPUP_S OPSCTL_THINK_MS
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
SERVER_PID=
cat > "$RESULTS/cpu_account.py" <<'PYEOF'
"""cpu_account.py OUT.json SERVER_PID CMD...: run CMD; write its CPU (all its processes) and the server's meanwhile."""
import json, os, resource, subprocess, sys, time
out, server, cmd = sys.argv[1], int(sys.argv[2] or 0), sys.argv[3:]
tick = os.sysconf("SC_CLK_TCK")

def tree(root):
    kids = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try: kids.setdefault(int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]), []).append(int(p))
        except (OSError, IndexError, ValueError): pass
    todo, found = [root], []
    while todo:
        p = todo.pop(); found.append(p); todo.extend(kids.get(p, []))
    return found

def server_now():  # (CPU s, run-queue wait s) summed over the server's processes' threads
    cpu = wait = 0.0
    for p in tree(server) if server else []:
        try: tasks = os.listdir(f"/proc/{p}/task")
        except OSError: continue
        for t in tasks:
            try:
                f = open(f"/proc/{p}/task/{t}/stat").read().rsplit(")", 1)[1].split()
                cpu += (int(f[11]) + int(f[12])) / tick
                wait += int(open(f"/proc/{p}/task/{t}/schedstat").read().split()[1]) / 1e9
            except (OSError, IndexError, ValueError): pass
    return cpu, wait

(c0, w0), t0 = server_now(), time.monotonic()
rc = subprocess.call(cmd)
wall = time.monotonic() - t0
(c1, w1), r = server_now(), resource.getrusage(resource.RUSAGE_CHILDREN)
json.dump({"rc": rc, "wall_s": wall, "client_cpu_s": r.ru_utime + r.ru_stime, "server_cpu_s": c1 - c0,
           "server_wait_s": w1 - w0, "loadavg_1m": os.getloadavg()[0]}, open(out, "w"))
sys.exit(rc)
PYEOF
account() {  # LABEL-TOOL CMD...: the command under timeout and taskset, its CPU and the server's to a file
    local name=$1; shift
    "$PY" "$RESULTS/cpu_account.py" "$RESULTS/$name-cpu.json" "$SERVER_PID" timeout 900 $(pin_args "$CLIENT_CPUS") "$@"
}
pin_args() { if [ -n "$1" ]; then echo "taskset -c $1"; fi; }  # taskset execs the command: $! stays its pid

run_guidellm() {  # LABEL URL MODEL C N
    local cmd="$GLLM run --backend kind=openai_http,target=$2,model=$3,request_format=/v1/completions,timeout=600"
    cmd+=" --profile kind=concurrent,streams=$4${GUIDELLM_RAMPUP_S:+,rampup_duration=$GUIDELLM_RAMPUP_S}"
    cmd+=" --constraint kind=max_requests,count=$5"
    local spread=",prompt_tokens_stdev=$IN_STD,prompt_tokens_min=$IN_MIN,prompt_tokens_max=$IN_MAX"
    [ "$IN_STD" != 0 ] || spread=  # a fixed length: GuideLLM refuses a stdev of 0
    cmd+=" --data kind=synthetic_text,prompt_tokens=$IN_MEAN$spread,output_tokens=$OUT_LEN"
    cmd+=" --tokenizer kind=huggingface_auto,model=$TOK --output kind=json,path=$RESULTS/$1-guidellm.json --disable-progress"
    record "$1-guidellm" "${GLLM_WORKERS:+GUIDELLM__MAX_WORKER_PROCESSES=$GLLM_WORKERS }$cmd"
    echo "== $1: guidellm${GLLM_WORKERS:+ ($GLLM_WORKERS worker process)}"
    (cd "$RESULTS" && { [ -z "$GLLM_WORKERS" ] || export GUIDELLM__MAX_WORKER_PROCESSES=$GLLM_WORKERS; } \
        && account "$1-guidellm" $cmd > "$RESULTS/$1-guidellm.log" 2>&1) || echo "   guidellm failed: see $RESULTS/$1-guidellm.log"
}
run_opsctl() {  # LABEL URL MODEL C N [WARMUP]
    local warmup=${6:-$OPSCTL_WARMUP}
    local inlen=$IN_MIN; [ "$IN_MIN" = "$IN_MAX" ] || inlen=$IN_MIN:$IN_MAX
    local cmd="$OPSCTL bench --url $2 --model $3 --endpoint completions --dataset random --input-len $inlen"
    cmd+=" --output-len $OUT_LEN --concurrency $4 --num-requests $5 --ignore-eos --tokenizer $TOK"
    cmd+=" --run-id $1-opsctl -o $RESULTS --no-report${warmup:+ --warmup $warmup}${OPSCTL_THINK_MS:+ --think-time-ms $OPSCTL_THINK_MS}"
    record "$1-opsctl" "$cmd"
    echo "== $1: opsctl bench"
    account "$1-opsctl" $cmd > "$RESULTS/$1-opsctl.log" 2>&1 || echo "   opsctl bench failed: see $RESULTS/$1-opsctl.log"
}
mock_run() {  # LABEL TOOL [TTFT_STD_MS ITL_STD_MS]
    local cmd="$GLLM mock-server --host 127.0.0.1 --port $MOCK_PORT --model mock-model --ttft-ms $TTFT_MS --itl-ms $ITL_MS --output-tokens $OUT_LEN"
    if [ $# -lt 4 ] && [ -n "$MOCK_STD" ]; then set -- "$1" "$2" $MOCK_STD; fi
    if [ $# -ge 4 ]; then cmd+=" --ttft-ms-std $3 --itl-ms-std $4"; fi
    record "$1-$2-server" "$cmd"
    $(pin_args "$SERVER_CPUS") $cmd > "$RESULTS/$1-$2-mock.log" 2>&1 &
    local pid=$!; PIDS+=("$pid"); SERVER_PID=$pid
    if wait_up "http://127.0.0.1:$MOCK_PORT" /v1/models "$pid"; then
        "run_$2" "$1" "http://127.0.0.1:$MOCK_PORT" mock-model "$MOCK_C" "$MOCK_N"
    else
        echo "mock server did not come up"; tail -5 "$RESULTS/$1-$2-mock.log"
    fi
    stop "$pid"
}

order_of() { if [ $(($1 % 2)) -eq 1 ]; then echo "guidellm opsctl"; else echo "opsctl guidellm"; fi; }
for r in $(seq 1 "$REPS"); do
    for tool in $(order_of "$r"); do mock_run "mock-r$r" "$tool"; done
done
GLLM_WORKERS=1
for r in $(seq 1 "$GLLM1_REPS"); do
    for tool in $(order_of "$r"); do mock_run "mock-gw1-r$r" "$tool"; done
done
GLLM_WORKERS=
for r in $(seq 1 "$JITTER_REPS"); do
    for tool in $(order_of "$r"); do mock_run "mock-jitter-r$r" "$tool" $JITTER_STD; done
done

if [ "$SKIP_SERVE" != 1 ]; then
    cmd="$OPSCTL serve ${SERVE_MODEL:+$SERVE_MODEL }--server-port $SERVE_PORT $SERVE_FLAGS --log-level warning"
    record "serve-server" "$cmd"
    echo "== $cmd"
    OUT_LEN=$SERVE_OUT_LEN
    if [ -n "$SERVE_IN_LEN" ]; then IN_MIN=$SERVE_IN_LEN; IN_MAX=$SERVE_IN_LEN; IN_MEAN=$SERVE_IN_LEN; IN_STD=0; fi
    $(pin_args "$SERVER_CPUS") $cmd > "$RESULTS/serve.log" 2>&1 &
    SERVE=$!; PIDS+=("$SERVE"); SERVER_PID=$SERVE
    if wait_up "http://127.0.0.1:$SERVE_PORT" /health "$SERVE"; then
        MODEL=$(curl -s "http://127.0.0.1:$SERVE_PORT/v1/models" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
        echo "   model $MODEL"
        if [ "$SERVE_PREWARM" -gt 0 ]; then  # first-request costs (allocations, lazy kernels) land on no tool
            echo "== prewarm: $SERVE_PREWARM requests at $SERVE_C streams, not compared"
            "$OPSCTL" bench --url "http://127.0.0.1:$SERVE_PORT" --model "$MODEL" --endpoint completions --dataset random \
                --input-len "$IN_MIN" --output-len "$OUT_LEN" --concurrency "$SERVE_C" --num-requests "$SERVE_PREWARM" \
                --ignore-eos --tokenizer "$TOK" --run-id prewarm -o "$RESULTS" --no-report > "$RESULTS/prewarm.log" 2>&1 \
                || echo "   prewarm failed: see $RESULTS/prewarm.log"
        fi
        for r in $(seq 1 "$SERVE_REPS"); do
            for tool in $(order_of "$r"); do
                # the server's own histograms around each run: its TTFT and E2E for that run's requests
                curl -s "http://127.0.0.1:$SERVE_PORT/metrics" > "$RESULTS/serve-r$r-$tool-metrics-before.txt"
                "run_$tool" "serve-r$r" "http://127.0.0.1:$SERVE_PORT" "$MODEL" "$SERVE_C" "$SERVE_N" "$SERVE_WARMUP"
                curl -s "http://127.0.0.1:$SERVE_PORT/metrics" > "$RESULTS/serve-r$r-$tool-metrics-after.txt"
            done
        done
    else
        echo "opsctl serve did not come up"; tail -5 "$RESULTS/serve.log"
    fi
    stop "$SERVE"
fi
fi  # ANALYZE_ONLY

"$PY" - "$RESULTS" "$OUT_JSON" "$GVENV" <<'EOF'
import json, os, platform, re, shutil, statistics, subprocess, sys, glob
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
        # first measured send to last completion: GuideLLM's span for its output tok/s
        "whole_run_tok_s": (s.get("extra", {}).get("whole_run") or {}).get("output_throughput"),
    }

def mock_log(path):
    """The mock's Sanic access log: one line per streamed request, its time being the server's time
    from the request to its first write (the first token): the server's own TTFT."""
    ms = [float(x) for x in re.findall(r"POST \S+/v1/completions 200 chunked\s+([\d.]+)ms", open(path).read())]
    return {"server_log_requests": len(ms), "server_ttft_ms_mean": statistics.fmean(ms),
            "server_ttft_ms_p50": pct(ms, 0.5)} if ms else {}

def server_metrics(before, after):
    """opsctl serve's own view of one tool's run: the change of its Prometheus histograms (TTFT from a
    request's arrival to its first token, E2E to its last) between a scrape before and one after."""
    def read(path):
        vals = {}
        for line in open(path):
            m = re.match(r"opsctl:(time_to_first_token_seconds|e2e_request_latency_seconds)_(sum|count)\{[^}]*\} (\S+)", line)
            if m:
                vals[m.group(1), m.group(2)] = float(m.group(3))
        return vals
    a, b = read(before), read(after)
    out = {}
    for name, key in (("time_to_first_token_seconds", "server_ttft_ms_mean"), ("e2e_request_latency_seconds", "server_e2e_ms_mean")):
        n = b.get((name, "count"), 0) - a.get((name, "count"), 0)
        if n > 0:
            out[key] = 1e3 * (b[name, "sum"] - a.get((name, "sum"), 0)) / n
            out["server_requests"] = int(n)
    return out

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

def guidellm_in_flight(path):
    """Requests in flight on average over GuideLLM's duration (its throughput's denominator)."""
    b = json.load(open(path))["benchmarks"][0]
    t = [r["info"]["timings"] for r in b["requests"]["successful"]]
    return sum(x["request_end"] - x["request_start"] for x in t) / b["duration"]

def opsctl_in_flight(run_dir, window):
    """Requests in flight on average over opsctl's steady window (its throughput's denominator)."""
    import csv
    if not window:
        return None
    a, z = window
    rows = [r for f in glob.glob(f"{run_dir}/requests-*.csv") for r in csv.DictReader(open(f)) if r.get("e2e_s")]
    return sum(max(0.0, min(z, float(r["start_s"]) + float(r["e2e_s"])) - max(a, float(r["start_s"])))
               for r in rows) / (z - a)

# Like for like: output tok/s; TTFT; opsctl's TPOT against GuideLLM's ITL (same definition);
# opsctl's pooled chunk-gap ITL mean against GuideLLM's ITL mean (equal when every chunk is one token).
PAIRS = [("output tok/s", "output_tok_s", "output_tok_s"),
         ("output tok/s, whole run", "whole_run_tok_s", "output_tok_s"),
         ("output tok/s, all C busy", "busy_tok_s", "busy_tok_s"),
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
        o["mean_in_flight"] = opsctl_in_flight(f"{results}/{label}-opsctl", o["window_s"])
        g["mean_in_flight"] = guidellm_in_flight(f"{results}/{label}-guidellm.json")
        serve = label.startswith("serve")
        streams = int(env["SERVE_C"] if serve else env["MOCK_C"])
        out_len = int(env["SERVE_OUT_LEN"]) if serve else 64
        for res in (o, g):  # the rate each tool's own latencies imply with every stream always busy
            res["busy_tok_s"] = streams * out_len / (res["e2e_ms_mean"] / 1e3)
    except (OSError, KeyError, IndexError, ValueError) as e:
        print(f"{label}: missing result ({e})"); continue
    for tool, res in (("guidellm", g), ("opsctl", o)):
        p = f"{results}/{label}-{tool}-mock.log"
        if label.startswith("mock") and os.path.exists(p): res.update(mock_log(p))
        p = f"{results}/{label}-{tool}-metrics-"
        if os.path.exists(p + "before.txt") and os.path.exists(p + "after.txt"):
            res.update(server_metrics(p + "before.txt", p + "after.txt"))
        p = f"{results}/{label}-{tool}-cpu.json"
        if os.path.exists(p):
            c = json.load(open(p))
            res["cpu"] = {"wall_s": c["wall_s"], "client_cpu_s": c["client_cpu_s"], "server_cpu_s": c["server_cpu_s"],
                          "server_wait_s": c["server_wait_s"], "loadavg_1m": c["loadavg_1m"],
                          "client_cores": c["client_cpu_s"] / c["wall_s"],
                          "server_wait_ms_per_s": 1e3 * c["server_wait_s"] / c["wall_s"]}
    rows = []
    for name, ok, gk in PAIRS:
        if o.get(ok) is None:
            continue
        ratio = o[ok] / g[gk] if g.get(gk) else None
        rows.append({"metric": name, "opsctl": o[ok], "guidellm": g[gk], "ratio": ratio,
                     "within_5pct": ratio is not None and abs(ratio - 1) <= 0.05})
    comparisons.append({"label": label, "opsctl": o, "guidellm": g, "rows": rows})
    print(f"\n{label}  (opsctl/guidellm)")
    print(f"  {'metric':28s} {'opsctl':>10s} {'guidellm':>10s} {'ratio':>7s}  within 5%")
    for r in rows:
        print(f"  {r['metric']:28s} {r['opsctl']:10.2f} {r['guidellm']:10.2f} {r['ratio']:7.3f}  {'yes' if r['within_5pct'] else 'NO'}")
    if "server_ttft_ms_mean" in g and "server_ttft_ms_mean" in o:
        print(f"  the server's own TTFT mean ms ({'access log' if label.startswith('mock') else '/metrics'}): during opsctl "
              f"{o['server_ttft_ms_mean']:.1f}, during guidellm {g['server_ttft_ms_mean']:.1f}; client minus server: "
              f"opsctl {o['ttft_ms_mean'] - o['server_ttft_ms_mean']:+.1f}, guidellm {g['ttft_ms_mean'] - g['server_ttft_ms_mean']:+.1f}")
    print(f"  other requests sent within +-5 ms of each (lockstep users): opsctl {o['starts_within_5ms']:.1f},"
          f" guidellm {g['starts_within_5ms']:.1f}")
    if o.get("mean_in_flight") and g.get("mean_in_flight"):
        print(f"  requests in flight on average over the throughput's span: opsctl {o['mean_in_flight']:.2f},"
              f" guidellm {g['mean_in_flight']:.2f}")
    if "cpu" in o and "cpu" in g:
        print(f"  client CPU (cores, over the tool's wall time incl. start-up): opsctl {o['cpu']['client_cores']:.2f},"
              f" guidellm {g['cpu']['client_cores']:.2f}; the server's run-queue wait ms per s: during opsctl"
              f" {o['cpu']['server_wait_ms_per_s']:.0f}, during guidellm {g['cpu']['server_wait_ms_per_s']:.0f}")

def runs_note(comps):
    """What was run, from the settings (the labels say which repetitions exist)."""
    labels = [c["label"] for c in comps]
    first = lambda kind: ", ".join(f"{l} {'guidellm' if int(l.rsplit('-r', 1)[1]) % 2 else 'opsctl'} first"
                                   for l in labels if l.startswith(kind + "-r"))
    std = env.get("MOCK_STD")
    parts = []
    if any(l.startswith("mock-r") for l in labels):
        parts.append(f"mock ({first('mock')}): guidellm mock-server {env['TTFT_MS']} ms TTFT / {env['ITL_MS']} ms ITL / "
                     f"64 tokens, {'jitter ' + std if std else 'no jitter'}, {env['MOCK_C']} streams, {env['MOCK_N']} "
                     "requests per tool")
    if any(l.startswith("mock-gw1-r") for l in labels):
        parts.append(f"mock-gw1 ({first('mock-gw1')}): the same, GuideLLM in one worker process "
                     "(GUIDELLM__MAX_WORKER_PROCESSES=1)")
    if any(l.startswith("mock-jitter-r") for l in labels):
        t, i = env["JITTER_STD"].split()
        parts.append(f"mock-jitter ({first('mock-jitter')}): the same with --ttft-ms-std {t} --itl-ms-std {i}")
    warm = env.get("OPSCTL_WARMUP")
    if parts:
        parts.append(f"opsctl against the mock: --warmup {warm}; GuideLLM runs no warm-up; a fresh mock server per run"
                     if warm else
                     "opsctl against the mock: its default warm-up, min(C, 4) requests, whose mean time its users' "
                     "first sends are spread over; GuideLLM runs no warm-up; a fresh mock server per run")
    if any(l.startswith("serve-r") for l in labels):
        lengths = (f"{env['SERVE_IN_LEN']} prompt tokens" if env.get("SERVE_IN_LEN") else "64-128 prompt tokens") \
            + f", {env['SERVE_OUT_LEN']} output tokens"
        prewarm = (f", the server warmed by {env['SERVE_PREWARM']} requests first (not compared)"
                   if int(env.get("SERVE_PREWARM") or 0) else "")
        parts.append(f"serve ({first('serve')}): opsctl serve {env.get('SERVE_MODEL') or '(the embedded SmolLM2-135M)'} "
                     f"{env['SERVE_FLAGS']}{prewarm}, {lengths}, "
                     f"{env['SERVE_C']} streams, {env['SERVE_N']} requests per tool, "
                     + (f"opsctl --warmup {env['SERVE_WARMUP']} (GuideLLM runs none; with none opsctl's users start "
                        "together, as GuideLLM's streams do)" if env.get("SERVE_WARMUP") else
                        "opsctl with its default warm-up, min(C, 4) requests, whose mean time its users' first sends "
                        "are spread over"))
    if env.get("GUIDELLM_RAMPUP_S"):
        parts.append(f"GuideLLM's streams' first requests spread over {env['GUIDELLM_RAMPUP_S']} s (rampup_duration)")
    if env.get("SERVER_CPUS") or env.get("CLIENT_CPUS"):
        parts.append(f"servers pinned to CPU {env.get('SERVER_CPUS') or 'any'}, the tools to CPU "
                     f"{env.get('CLIENT_CPUS') or 'any'} (taskset)")
    return "; ".join(parts) + "."

def measured_line(c):
    """One line per comparison from its numbers: rows more than 5% apart, herding, the mock's own TTFT."""
    o, g = c["opsctl"], c["guidellm"]
    off = [f"{r['metric']} {r['ratio']:.3f}" for r in c["rows"] if r["ratio"] is not None and not r["within_5pct"]]
    line = (f"{c['label']}: " + (f"more than 5% apart: {', '.join(off)}" if off else "every row within 5%")
            + f"; other requests sent within +-5 ms of each: opsctl {o['starts_within_5ms']:.1f}, "
            f"guidellm {g['starts_within_5ms']:.1f}")
    if "server_ttft_ms_mean" in o and "server_ttft_ms_mean" in g:
        line += (f"; the server's own TTFT mean ({'access log' if c['label'].startswith('mock') else '/metrics'}) "
                 f"{o['server_ttft_ms_mean']:.1f} ms under opsctl, "
                 f"{g['server_ttft_ms_mean']:.1f} under guidellm; client minus server TTFT mean: opsctl "
                 f"{o['ttft_ms_mean'] - o['server_ttft_ms_mean']:+.1f} ms, guidellm "
                 f"{g['ttft_ms_mean'] - g['server_ttft_ms_mean']:+.1f}")
    if o.get("mean_in_flight") and g.get("mean_in_flight"):
        line += (f"; requests in flight on average over the throughput's span: opsctl {o['mean_in_flight']:.1f}, "
                 f"guidellm {g['mean_in_flight']:.1f}")
    if "cpu" in o and "cpu" in g:
        line += (f"; client CPU {o['cpu']['client_cores']:.2f} cores (opsctl) vs {g['cpu']['client_cores']:.2f} "
                 f"(guidellm), the server waiting for a CPU {o['cpu']['server_wait_ms_per_s']:.0f} vs "
                 f"{g['cpu']['server_wait_ms_per_s']:.0f} ms per s")
    return line

DEFINITIONS = {
    "output_tok_s": "opsctl: output tokens over its steady window (every user busy: from the last user's first "
                    "send to the first user's last finish, tokens counted by arrival); GuideLLM: output tokens of "
                    "the counted requests / (first send to last completion), its output_tokens_per_second mean",
    "ttft": "opsctl: time.monotonic() before the request is handed to the HTTP client (keep-alive, so no connect "
            "after the first) to the first non-empty content chunk; GuideLLM: from the httpcore trace event "
            "send_request_headers.started (excludes connection-pool wait and TCP connect) to the first chunk with "
            "a token",
    "itl": "GuideLLM ITL = (last token - first token) / (output tokens - 1) per request (token-weighted mean) = "
           "opsctl TPOT; opsctl itl = every gap between content chunks, pooled (same mean when one token per "
           "chunk, as here; its p50 differs since it is a percentile of gaps, not of per-request means); GuideLLM "
           "TPOT = (last token - request start) / output tokens (includes TTFT), not compared",
    "server_ttft_ms_mean": "the server's own mean TTFT over the run: the mock's access log, or opsctl serve's "
                           "/metrics histogram (arrival in the handler to the first token) scraped before and after "
                           "the run; the latter also counts opsctl's warm-up requests when it runs any",
    "busy_tok_s": "C x 64 output tokens / the tool's mean E2E: the rate its own latencies imply with every stream "
                  "always busy (no gaps between a stream's requests, no ramp, no drain), for comparing what the two "
                  "tools saw of the server apart from how each counts its span",
    "mean_in_flight": "requests in flight on average over the span a tool's output tok/s is over (GuideLLM: its "
                      "duration; opsctl: its steady window)",
    "starts_within_5ms": "the mean number of other requests sent within +-5 ms of each request (0: spread out; "
                         "C-1: every user in lockstep)",
}

def ver(cmd):
    try: return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip().splitlines()[-1]
    except Exception as e: return f"? ({e})"
commands = dict(line.rstrip("\n").split("\t", 1) for line in open(f"{results}/commands.tsv") if "\t" in line)
doc = {
    "issue": 11,
    "what": "opsctl bench --url (Locust) vs GuideLLM, one after the other, same servers, same concurrency",
    "script": "bash ci/guidellm_compare.sh " + gvenv,
    "versions": {"guidellm": ver([f"{gvenv}/bin/guidellm", "--version"]),
                 "opsctl_git_commit": env.get("OPSCTL_GIT_COMMIT") or ver(["git", "rev-parse", "HEAD"]),
                 "python": platform.python_version()},
    "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None),
                "gpu": (ver(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]) if shutil.which("nvidia-smi")
                        else None),
                "note": env.get("MACHINE_NOTE") or "2 CPU cores shared with other jobs; client and server on the same cores"},
    "settings": {k: env.get(k) for k in ("MOCK_C", "MOCK_N", "REPS", "TTFT_MS", "ITL_MS", "GLLM1_REPS", "JITTER_REPS", "JITTER_STD",
                                         "MOCK_STD", "OPSCTL_WARMUP", "SERVE_C", "SERVE_N", "SERVE_REPS",
                                         "SERVE_WARMUP", "SERVER_CPUS", "CLIENT_CPUS", "SERVE_MODEL", "SERVE_FLAGS",
                                         "SERVE_IN_LEN", "SERVE_OUT_LEN", "SERVE_PREWARM", "GUIDELLM_RAMPUP_S",
                                         "OPSCTL_THINK_MS")},
    "commands": commands,
    "comparisons": comparisons,
    "runs_note": runs_note(comparisons),
    "definitions": DEFINITIONS,
    "findings": (json.load(open(env["FINDINGS_FILE"])) if env.get("FINDINGS_FILE") else [])
                + [measured_line(c) for c in comparisons],
}
json.dump(doc, open(out_json, "w"), indent=1)
print(f"\nwrote {out_json}")
EOF
