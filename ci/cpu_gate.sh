#!/usr/bin/env bash
# The CPU performance gate (issue 14), run by .ci/run after the tests and by the workflow's CPU job:
# REPEATS runs of `opsctl bench offline --workload mixed --output-len 16:96 --peer generate` (one process,
# --runs) on the embedded default (SmolLM2-135M: the engine and transformers `generate` on the same 16
# requests, a minute apart on the same machine), then `opsctl gate` on their medians against
# ci/baselines/cpu-smollm2.json:
#   - engine / transformers output tok/s in the same run (ratio_to_peer): judged on any machine, though it
#     moves with the machine (1.81x on the baseline's AMD EPYC VM, ~1.55x on a 2.8x faster Intel Xeon VM);
#   - the engine's own tok/s, p99 TTFT and p50 TPOT (absolute): judged only when this machine's
#     device class is the baseline's (gates.yaml's device_class), skipped on other CPUs.
# Writes $GATE_DIR (default reports/ci-gate): the bench runs, gate.md (a PR comment), gate.html and
# bench-json/ (github-action-benchmark's input). Exit code: opsctl gate's (0 hold, 1 fail, 2 bad input).
#   usage: bash ci/cpu_gate.sh            (knobs: REPEATS=3 GATE_DIR=... OPSCTL=.venv/bin/opsctl)
set -euo pipefail
cd "$(dirname "$0")/.."
OPSCTL=${OPSCTL:-.venv/bin/opsctl}
GATE_DIR=${GATE_DIR:-reports/ci-gate}
REPEATS=${REPEATS:-3}
rm -rf "$GATE_DIR"
mkdir -p "$GATE_DIR"
started=$SECONDS
# One process writes the REPEATS result folders gate-1 .. gate-N (--runs; a single run is gate/): torch's
# import and the two model loads once instead of once a repeat. Outputs of 16-96 tokens, not the mixed
# workload's 16-128: three repeats of the full workload took 4.2-5.3 minutes as this VM's speed drifted
# (reports/examples/cpu/gate-2026-12-03/README.md), and the gate must stay under 5.
"$OPSCTL" bench offline --workload mixed --output-len 16:96 --peer generate --device cpu --no-report \
    --runs "$REPEATS" -o "$GATE_DIR" --run-id gate > "$GATE_DIR/bench.log" 2>&1 \
    || { echo "bench failed:"; tail -20 "$GATE_DIR/bench.log"; exit 2; }
runs=()
if [ "$REPEATS" = 1 ]; then
    runs=("$GATE_DIR/gate")
else
    for i in $(seq 1 "$REPEATS"); do
        runs+=("$GATE_DIR/gate-$i")
    done
fi
echo "$REPEATS bench repeats in $((SECONDS - started)) s"
"$OPSCTL" gate "${runs[@]}" --baseline ci/baselines/cpu-smollm2.json --gates ci/gates.yaml \
    --markdown "$GATE_DIR/gate.md" --html "$GATE_DIR/gate.html" --benchmark-json "$GATE_DIR/bench-json"
