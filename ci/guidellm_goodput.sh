#!/usr/bin/env bash
# Issue 12: `opsctl tune`'s load search against GuideLLM 0.8's goodput search, on the same server.
# Both search the highest concurrency at which the fraction of requests meeting every latency
# objective (TTFT and TPOT) reaches a target: double from INITIAL streams until a level fails (or
# MAX_STREAMS), then bisect until worst - best <= max(1, TOLERANCE x best). Per repetition:
#   GuideLLM: `opsctl serve` (the embedded SmolLM2-135M, CPU, --max-batch-size 8 --session-len 1024)
#     started for it, then `guidellm run --profile kind=goodput,...` with the SLO in --metrics and
#     REQUESTS requests per probe (--constraint kind=max_requests: the same count for every probe),
#     then the server stopped;
#   opsctl: `opsctl tune --gpu cpu --max-trials 1` with the same engine flags (it starts its own
#     server: the same command line plus --enable-admin), the same SLO (--slo ttft_pP_ms,tpot_pP_ms:
#     target P/100), initial/max streams, tolerance and --min-requests REQUESTS (opsctl probes with
#     max(REQUESTS, 3 x streams) requests: REQUESTS when REQUESTS >= 3 x MAX_STREAMS).
#   GuideLLM again with its streams' first requests spread over RAMPUP_S seconds (the profile's
#     rampup_duration; 0 leaves this arm out): GuideLLM's streams otherwise start together and, all
#     requests being the same length, stay in step, while opsctl's users spread their first sends
#     over a warm-up request's time and stay spread: the same concurrency, a different load.
# REPS repetitions, the order of the tools alternating (odd: GuideLLM first, even: opsctl first), so
# a drift of the shared machine is not blamed on one tool.
# Every request: a synthetic prompt of IN_LEN tokens (SmolLM2's tokenizer, which every preset uses),
# OUT_LEN output tokens with ignore_eos (by default 64 and 32: the `chat` workload as opsctl tune
# scales it for the CPU; opsctl tune is given them as --input-len/--output-len), streamed
# /v1/completions.
# Known differences the two tools keep (reported in the JSON's `differences`):
#   - an unresolved opsctl probe (its Wilson interval straddles the target) is run again with twice
#     the requests when twice could resolve it, and the second run decides; GuideLLM keeps the
#     first verdict and warns. The JSON lists both of opsctl's runs (the tune.json keeps the second);
#   - opsctl runs min(streams, 4) warm-up requests first (not counted); GuideLLM runs none;
#   - TPOT: opsctl (e2e - ttft) / (tokens - 1), GuideLLM (last - first token) / (tokens - 1).
# GuideLLM must live in its own virtualenv (never the project's):
#   python3 -m venv /tmp/gllm && /tmp/gllm/bin/pip install torch==2.13.0 'guidellm==0.8.*'
#   usage: bash ci/guidellm_goodput.sh [GUIDELLM_VENV]      (or GUIDELLM_VENV=/tmp/gllm)
# Knobs (env): TTFT_MS=500 TPOT_MS=90 PERCENTILE=90 INITIAL=1 MAX_STREAMS=8 TOLERANCE=0.1
#   REQUESTS=40 MAX_PROBES=10 RAMPUP_S=3 REPS=2 PORT=18751 ENGINE_FLAGS="--max-batch-size 8 --session-len 1024" RESULTS=/tmp/guidellm-goodput
#   OUT_JSON=reports/examples/cpu/guidellm_goodput.json FINDINGS_FILE=path (JSON list of strings:
#   what a person concluded from the runs) ANALYZE_ONLY=1 (no runs: rebuild the JSON from $RESULTS)
#   IN_LEN=64 OUT_LEN=32 MODEL= (opsctl's model argument, e.g. preset:qwen2.5-7b; empty: the embedded
#   default) TUNE_GPU=cpu (opsctl tune --gpu) TOKENIZER=dir MACHINE_NOTE=text (the JSON's machine note)
#   OPSCTL_BIN=path PYTHON_BIN=path (default: the project's .venv; ci/guidellm_device.sh sets them on
#   the GPU machine) OPSCTL_GIT_COMMIT=sha (recorded where the tree is not a git checkout).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GVENV=${1:-${GUIDELLM_VENV:-/tmp/gllm}}
GLLM="$GVENV/bin/guidellm"
OPSCTL=${OPSCTL_BIN:-$ROOT/.venv/bin/opsctl}
PY=${PYTHON_BIN:-$ROOT/.venv/bin/python}
RESULTS=${RESULTS:-/tmp/guidellm-goodput}
OUT_JSON=${OUT_JSON:-reports/examples/cpu/guidellm_goodput.json}
TTFT_MS=${TTFT_MS:-500}; TPOT_MS=${TPOT_MS:-90}; PERCENTILE=${PERCENTILE:-90}
INITIAL=${INITIAL:-1}; MAX_STREAMS=${MAX_STREAMS:-8}; TOLERANCE=${TOLERANCE:-0.1}
REQUESTS=${REQUESTS:-40}; MAX_PROBES=${MAX_PROBES:-10}; REPS=${REPS:-2}; PORT=${PORT:-18751}
RAMPUP_S=${RAMPUP_S:-3}
ENGINE_FLAGS=${ENGINE_FLAGS:-"--max-batch-size 8 --session-len 1024"}
IN_LEN=${IN_LEN:-64}; OUT_LEN=${OUT_LEN:-32}; MODEL=${MODEL:-}; TUNE_GPU=${TUNE_GPU:-cpu}; MACHINE_NOTE=${MACHINE_NOTE:-}
TOK=${TOKENIZER:-$HOME/.cache/opsctl/models/SmolLM2-135M-Instruct}
ANALYZE_ONLY=${ANALYZE_ONLY:-0}; FINDINGS_FILE=${FINDINGS_FILE:-}
TARGET=$("$PY" -c "print($PERCENTILE / 100)")
export TTFT_MS TPOT_MS PERCENTILE TARGET INITIAL MAX_STREAMS TOLERANCE REQUESTS MAX_PROBES REPS ENGINE_FLAGS RAMPUP_S
export IN_LEN OUT_LEN FINDINGS_FILE MODEL TUNE_GPU MACHINE_NOTE
[ -x "$GLLM" ] || { echo "no guidellm at $GLLM (pass the GuideLLM virtualenv)"; exit 2; }
[ -x "$OPSCTL" ] || { echo "no $OPSCTL"; exit 2; }
[ -d "$TOK" ] || { echo "no tokenizer directory $TOK (set TOKENIZER)"; exit 2; }
CMDS="$RESULTS/commands.tsv"

if [ "$ANALYZE_ONLY" != 1 ]; then
rm -rf "$RESULTS"; mkdir -p "$RESULTS" "$(dirname "$OUT_JSON")"
: > "$CMDS"   # label <TAB> command, for the JSON
SERVE=
cleanup() { [ -z "$SERVE" ] || { kill -TERM "$SERVE" 2>/dev/null; wait "$SERVE" 2>/dev/null; }; }
trap cleanup EXIT
trap 'exit 130' INT TERM
record() { printf '%s\t%s\n' "$1" "$2" >> "$CMDS"; }
timed() {  # LABEL CMD...: run CMD, its wall seconds and exit status to $RESULTS/LABEL-time.json
    local label=$1; shift; local t0 t1 rc
    t0=$(date +%s.%N); "$@"; rc=$?; t1=$(date +%s.%N)
    printf '{"wall_s": %s, "rc": %s, "loadavg_after": "%s"}\n' "$(awk "BEGIN{print $t1 - $t0}")" "$rc" \
        "$(cut -d' ' -f1-3 /proc/loadavg)" > "$RESULTS/$label-time.json"
    return $rc
}

run_guidellm() {  # LABEL [RAMPUP_S]: the arm "guidellm", or "guidellm_rampup" with a ramp-up
    local label=$1 rampup=${2:-0} url="http://127.0.0.1:$PORT" model tool=guidellm
    [ "$rampup" = 0 ] || tool=guidellm_rampup
    local serve="$OPSCTL serve ${MODEL:+$MODEL }--server-port $PORT $ENGINE_FLAGS --log-level warning"
    record "$label-$tool-server" "$serve"
    echo "== $label: $tool goodput search (opsctl serve on :$PORT)"
    $serve > "$RESULTS/$label-$tool-serve.log" 2>&1 &
    SERVE=$!
    for _ in $(seq 1 600); do
        curl -sf -o /dev/null "$url/health" && break
        kill -0 "$SERVE" 2>/dev/null || break
        sleep 0.5
    done
    if ! curl -sf -o /dev/null "$url/health"; then
        echo "   opsctl serve did not come up"; tail -5 "$RESULTS/$label-$tool-serve.log"; cleanup; SERVE=; return
    fi
    model=$(curl -s "$url/v1/models" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
    local profile="{\"kind\": \"goodput\", \"target_attainment\": $TARGET, \"initial_streams\": $INITIAL,"
    profile+=" \"max_streams\": $MAX_STREAMS, \"tolerance\": $TOLERANCE, \"max_probes\": $MAX_PROBES, \"confidence\": 0.95,"
    profile+=" \"rampup_duration\": $rampup}"
    local metrics="{\"kind\": \"generative\", \"slo\": {\"ttft_ms\": $TTFT_MS, \"tpot_ms\": $TPOT_MS}}"
    local cmd=("$GLLM" run --backend "kind=openai_http,target=$url,model=$model,request_format=/v1/completions,timeout=600"
               --profile "$profile" --metrics "$metrics" --constraint "kind=max_requests,count=$REQUESTS"
               --data "kind=synthetic_text,prompt_tokens=$IN_LEN,output_tokens=$OUT_LEN"
               --tokenizer "kind=huggingface_auto,model=$TOK"
               --output "kind=json,path=$RESULTS/$label-$tool.json" --disable-progress)
    record "$label-$tool" "${cmd[*]@Q}"
    (cd "$RESULTS" && GUIDELLM__LOGGING__CONSOLE_LOG_LEVEL=INFO timed "$label-$tool" timeout 900 "${cmd[@]}") \
        > "$RESULTS/$label-$tool.log" 2>&1 || echo "   guidellm failed: see $RESULTS/$label-$tool.log"
    grep -a "Goodput search" "$RESULTS/$label-$tool.log" | tail -1 | sed 's/^.*- /   /'
    cleanup; SERVE=
}

run_opsctl() {  # LABEL
    local label=$1
    local cmd=($OPSCTL tune ${MODEL:+$MODEL} --gpu "$TUNE_GPU" --max-trials 1 --no-quality $ENGINE_FLAGS
               --input-len "$IN_LEN" --output-len "$OUT_LEN"
               --slo "ttft_p${PERCENTILE}_ms=$TTFT_MS,tpot_p${PERCENTILE}_ms=$TPOT_MS"
               --initial-streams "$INITIAL" --max-streams "$MAX_STREAMS" --min-requests "$REQUESTS"
               --load-tolerance "$TOLERANCE" --run-id "$label-opsctl" -o "$RESULTS")
    record "$label-opsctl" "${cmd[*]@Q}"
    echo "== $label: opsctl tune"
    COLUMNS=200 timed "$label-opsctl" timeout 900 "${cmd[@]}" > "$RESULTS/$label-opsctl.log" 2>&1
    local rc=$?; [ $rc -le 1 ] || echo "   opsctl tune failed ($rc): see $RESULTS/$label-opsctl.log"
    grep -a "best:\|no load meets" "$RESULTS/$label-opsctl.log" | tail -1 | sed 's/^ */   /'
}

run_guidellm_rampup() { [ "$RAMPUP_S" = 0 ] || run_guidellm "$1" "$RAMPUP_S"; }
order_of() {
    if [ $(($1 % 2)) -eq 1 ]; then echo "guidellm guidellm_rampup opsctl"; else echo "opsctl guidellm_rampup guidellm"; fi
}
for r in $(seq 1 "$REPS"); do
    for tool in $(order_of "$r"); do "run_$tool" "r$r"; done
done
fi  # ANALYZE_ONLY

"$PY" - "$RESULTS" "$OUT_JSON" "$GVENV" <<'EOF'
import bisect, csv, glob, json, math, os, platform, re, shlex, shutil, subprocess, sys
results, out_json, gvenv = sys.argv[1:4]
env = dict(os.environ)
TTFT, TPOT, TARGET = float(env["TTFT_MS"]), float(env["TPOT_MS"]), float(env["TARGET"])
INITIAL, MAX_STREAMS, TOL = int(env["INITIAL"]), int(env["MAX_STREAMS"]), float(env["TOLERANCE"])
Z = 1.959964
TOGETHER_S = 0.1  # requests sent within one decode step (~55-80 ms here) of each other share a prefill

def wilson(k, n):
    if n <= 0:
        return 0.0, 1.0
    p = k / n; d = 1 + Z * Z / n; c = (p + Z * Z / (2 * n)) / d
    s = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / d
    return max(0.0, c - s), min(1.0, c + s)

def pct(xs, q):  # linear interpolation, as numpy's default
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    k = (len(xs) - 1) * q; f = int(k); c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)

def together(starts):
    """The mean number of other requests of the probe sent within TOGETHER_S of each one (0: spread
    out; streams - 1: every stream in step)."""
    st = sorted(x for x in starts if x is not None)
    return (sum(bisect.bisect_right(st, t + TOGETHER_S) - bisect.bisect_left(st, t - TOGETHER_S) - 1 for t in st)
            / len(st)) if st else None

def probe(streams, rows, good, extra=None):
    """rows: (ttft_ms, tpot_ms, start_s) of the probe's requests; good: how many met every objective."""
    n = len(rows); lo, hi = wilson(good, n); att = good / n if n else None
    return {"streams": streams, "requests": n, "attainment": att, "attainment_low": lo, "attainment_high": hi,
            "pass": att is not None and att >= TARGET, "resolved": lo >= TARGET or hi < TARGET,
            "ttft_p50_ms": pct([r[0] for r in rows], 0.5), "ttft_p90_ms": pct([r[0] for r in rows], 0.9),
            "tpot_p50_ms": pct([r[1] for r in rows], 0.5), "tpot_p90_ms": pct([r[1] for r in rows], 0.9),
            "sent_together": together([r[2] for r in rows]), **(extra or {})}

def bracket(probes):
    """The search's state from its probes in order: (highest passing, lowest failing) streams."""
    best = worst = None
    for p in probes:
        if p.get("counted", True):
            if p["pass"]:
                best = max(best or 0, p["streams"])
            else:
                worst = min(worst or p["streams"], p["streams"])
    return best, worst

def guidellm(label, tool):
    path = f"{results}/{label}-{tool}.json"
    if not os.path.exists(path):
        return None
    probes = []
    for b in json.load(open(path))["benchmarks"]:
        m = b["metrics"]; att, n = m.get("slo_attainment"), m.get("slo_determined_requests") or 0
        reqs = (b.get("requests") or {}).get("successful") or []
        rows = [(r.get("time_to_first_token_ms"), r.get("inter_token_latency_ms"), r.get("request_start_time"))
                for r in reqs]
        p = probe(b["config"]["strategy"]["streams"], rows, 0, {
            "errors": (m.get("request_totals") or {}).get("errored"), "duration_s": b.get("duration"),
            "rampup_s": b["config"]["strategy"].get("rampup_duration")})
        if att is not None:  # GuideLLM's own figures decide (errors count against, undetermined are left out)
            lo, hi = wilson(round(att * n), n)
            p.update(requests=n, attainment=att, attainment_low=lo, attainment_high=hi, **{"pass": att >= TARGET},
                     resolved=lo >= TARGET or hi < TARGET)
        probes.append(p)
    best, worst = bracket(probes)
    said = re.findall(r"Goodput search[^\n]*", open(f"{results}/{label}-{tool}.log", errors="replace").read())
    return {"probes": probes, "answer": best, "bracket": [best, worst],
            "stop": ("max_streams_reached" if worst is None else "objectives_unmet_at_minimum" if best is None
                     else "converged" if worst - best <= max(1, TOL * best) else "max_probes_exhausted"),
            "log_line": said[-1].strip() if said else None}

def opsctl(label):
    path = f"{results}/{label}-opsctl/tune.json"
    if not os.path.exists(path):
        return None
    trials = json.load(open(path)).get("trials") or []
    if not trials:
        return None
    t = trials[0]
    kept = {p["bench_dir"]: p for p in t.get("points") or []}
    probes = []
    # every bench run of the trial in the order it ran (a re-run of an unresolved probe included),
    # judged again from its requests CSV as the tune judges them (an error meets no objective)
    def made(folder):  # when the bench run wrote its result (seconds), else the folder's time
        try:
            return json.load(open(f"{folder}/result.json"))["created_at"]
        except (OSError, ValueError, KeyError):
            return str(os.path.getmtime(folder))
    for folder in sorted(glob.glob(f"{results}/{label}-opsctl/bench/*-c*-n*"), key=made):
        ms = lambda r, k: float(r[k]) * 1000 if r.get(k) not in (None, "") else None
        csvs = glob.glob(f"{folder}/requests-*.csv")
        reqs = list(csv.DictReader(open(csvs[0]))) if csvs else []
        good = sum(1 for r in reqs if not r.get("error") and ms(r, "ttft_s") is not None and ms(r, "ttft_s") <= TTFT
                   and (ms(r, "tpot_s") is None or ms(r, "tpot_s") <= TPOT))
        rows = [(ms(r, "ttft_s"), ms(r, "tpot_s"), float(r["start_s"]) if r.get("start_s") else None) for r in reqs]
        k = kept.get(os.path.relpath(folder, f"{results}/{label}-opsctl"))
        p = probe(int(re.search(r"-c(\d+)-n\d+$", folder).group(1)), rows, good,
                  {"errors": sum(1 for r in reqs if r.get("error")), "counted": k is not None})
        if k is not None:  # the tune's own verdict (the recomputation above must agree with it)
            p.update(tune_attainment=k["slo_fraction"], tune_pass=k["meets_slo"])
        probes.append(p)  # counted=False: unresolved, run again with twice the requests; the re-run decided
    best, worst = bracket(probes)
    return {"probes": probes, "answer": (t.get("best") or {}).get("concurrency"), "bracket": [best, worst],
            "stop": t.get("stop_reason"), "status": t.get("status")}

def agree(g, o):
    """Within one step: the answer of one lies within the other's final [best, worst] bracket, or the
    two answers differ by at most one bisection step (the wider final bracket, at least 1)."""
    if g is None or o is None:
        return None
    a, b = g["answer"] or 0, o["answer"] or 0
    def inside(x, br):
        lo, hi = br[0] or 0, br[1] if br[1] is not None else (br[0] or 0)
        return lo <= x <= hi
    width = lambda br: (br[1] - (br[0] or 0)) if br[1] is not None else 1
    step = max(1, width(g["bracket"]), width(o["bracket"]))
    inb = inside(b, g["bracket"]) or inside(a, o["bracket"])
    return {"opsctl_minus_guidellm": b - a, "within_bracket": inb, "step": step,
            "within_one_step": inb or abs(a - b) <= step}

def timing(name):
    p = f"{results}/{name}-time.json"
    return json.load(open(p)) if os.path.exists(p) else {}

TOOLS = ("guidellm", "guidellm_rampup", "opsctl")
labels = sorted({os.path.basename(p).split("-")[0] for p in glob.glob(f"{results}/r*-*")}, key=lambda s: int(s[1:]))
reps = []
for label in labels:
    rep = {"label": label, "order": list(TOOLS) if int(label[1:]) % 2 else list(reversed(TOOLS)),
           "guidellm": guidellm(label, "guidellm"), "guidellm_rampup": guidellm(label, "guidellm_rampup"),
           "opsctl": opsctl(label),
           "wall_s": {t: timing(f"{label}-{t}").get("wall_s") for t in TOOLS},
           "load_after": {t: timing(f"{label}-{t}").get("loadavg_after") for t in TOOLS}}
    rep["first"] = rep["order"][0]
    rep["agreement"] = agree(rep["guidellm"], rep["opsctl"])
    rep["agreement_rampup"] = agree(rep["guidellm_rampup"], rep["opsctl"])
    reps.append(rep)

def fmt(p):
    if p["attainment"] is None:
        return f"{p['streams']}:-"
    return (f"{p['streams']}:{p['attainment']:.2f}{'P' if p['pass'] else 'F'}{'' if p['resolved'] else '?'}"
            f"/{p['requests']}{'' if p.get('counted', True) else ' (then re-run)'}")
print(f"probe: streams:attainment P(ass)/F(ail) ?=unresolved /requests")
for r in reps:
    print(f"\n{r['label']} (order {', '.join(r['order'])})")
    for tool in TOOLS:
        x = r[tool]
        if x is None:
            continue
        print(f"  {tool:16s} answer {x['answer']} bracket {x['bracket']} ({x['stop']}); "
              f"{r['wall_s'][tool] or 0:.0f} s; probes " + "  ".join(fmt(p) for p in x["probes"]))
    print(f"  agreement (guidellm vs opsctl): {r['agreement']}")
    if r["agreement_rampup"]:
        print(f"  agreement (guidellm_rampup vs opsctl): {r['agreement_rampup']}")

def ver(cmd):
    try: return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip().splitlines()[-1]
    except Exception as e: return f"? ({e})"
def all_of(key):
    v = [r[key]["within_one_step"] for r in reps if r[key]]
    return all(v) if v else None
commands = {k: shlex.join(shlex.split(v)) for k, v in  # one quoting style, however the shell wrote them
            (line.rstrip("\n").split("\t", 1) for line in open(f"{results}/commands.tsv") if "\t" in line)}
doc = {
    "issue": 12,
    "what": "opsctl tune's load search against GuideLLM's goodput search, on the same server (opsctl serve)",
    "script": "bash ci/guidellm_goodput.sh " + gvenv,
    "versions": {"guidellm": ver([f"{gvenv}/bin/guidellm", "--version"]),
                 "opsctl_git_commit": env.get("OPSCTL_GIT_COMMIT") or ver(["git", "rev-parse", "HEAD"]),
                 "python": platform.python_version()},
    "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None),
                "gpu": (ver(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]) if shutil.which("nvidia-smi")
                        else None),
                "note": env.get("MACHINE_NOTE") or "2 CPU cores shared with other jobs; client and server on the same cores"},
    "settings": {"ttft_ms": TTFT, "tpot_ms": TPOT, "percentile": int(env["PERCENTILE"]), "target_attainment": TARGET,
                 "initial_streams": INITIAL, "max_streams": MAX_STREAMS, "tolerance": TOL,
                 "requests_per_probe": int(env["REQUESTS"]), "max_probes": int(env["MAX_PROBES"]), "confidence": 0.95,
                 "guidellm_rampup_s": float(env["RAMPUP_S"]), "engine_flags": env["ENGINE_FLAGS"],
                 "prompt_tokens": int(env["IN_LEN"]), "output_tokens": int(env["OUT_LEN"]), "reps": int(env["REPS"])},
    "commands": commands,
    "repetitions": reps,
    "agree_within_one_step": all_of("agreement"),
    "agree_within_one_step_rampup": all_of("agreement_rampup"),
    "definitions": {
        "attainment": "the fraction of a probe's requests meeting every objective (TTFT <= ttft_ms and TPOT <= "
                      "tpot_ms; an error meets none); a probe passes when it is >= target_attainment",
        "resolved": "the 95% Wilson interval of the attainment lies wholly on one side of the target",
        "bracket": "[highest passing, lowest failing] streams at the end of the search (null: none)",
        "one_step": "the answer of one search lies within the other's final bracket, or the two answers differ "
                    "by at most the wider final bracket (at least 1 stream)",
        "opsctl_probes": "every bench run of the trial, in order, judged again from its requests CSV; counted="
                         "false: a probe that was unresolved and run again with twice the requests (the re-run "
                         "decided)",
        "sent_together": f"the mean number of other requests of a probe sent within {TOGETHER_S * 1000:.0f} ms of "
                         "each (0: spread out; streams - 1: every stream in step)",
        "guidellm_rampup": "GuideLLM with rampup_duration = guidellm_rampup_s: its streams' first requests spread "
                           "evenly over that time instead of sent together",
        "tpot": "opsctl: (e2e - ttft) / (tokens - 1) per request; GuideLLM: its inter_token_latency_ms, "
                "(last - first token) / (tokens - 1)",
    },
    "differences": [
        "opsctl re-runs an unresolved probe with twice the requests when twice could resolve it; GuideLLM keeps "
        "the first verdict and only warns",
        "opsctl runs min(streams, 4) uncounted warm-up requests per probe and its users' first sends are spread "
        "over a warm-up request's time; GuideLLM runs none and its streams start together (unless "
        "rampup_duration spreads them)",
        "opsctl serve for GuideLLM is started by this script; opsctl tune starts its own (the same flags plus "
        "--enable-admin)",
    ],
    "findings": (json.load(open(env["FINDINGS_FILE"])) if env.get("FINDINGS_FILE") else []),
}
json.dump(doc, open(out_json, "w"), indent=1)
print(f"\nagree within one step in every repetition: GuideLLM {doc['agree_within_one_step']}, GuideLLM with "
      f"ramp-up {doc['agree_within_one_step_rampup']}\nwrote {out_json}")
EOF
