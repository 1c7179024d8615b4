"""`opsctl gate`: medians, directions, ratio gates, device classes, bad input, the output formats;
and the acceptance check that a deliberately slowed engine fails the gates the normal one passes.

The unit tests use hand-made BenchResult files whose medians are worked out by hand in each test.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.gate import GateInputError, calibrate, device_class, judge, load_gates
from toolkit.report.schema import BenchResult, LatencyStats, Run, RunSummary

REPO = Path(__file__).resolve().parents[2]
WORKLOAD = {"name": "mixed", "num_requests": 4}


def _stats(p99_s: float) -> LatencyStats:
    return LatencyStats(count=4, mean=p99_s / 2, p50=p99_s / 2, p90=p99_s, p95=p99_s, p99=p99_s, max=p99_s)


def _run(target: str, tok_s: float, ttft_p99_s: float, workload=WORKLOAD) -> Run:
    summary = RunSummary(num_requests=4, num_completed=4, num_errors=0, duration_s=1.0, request_throughput=4.0,
                         input_throughput=100.0, output_throughput=tok_s, total_token_throughput=tok_s + 100,
                         ttft=_stats(ttft_p99_s), e2e=_stats(1.0), extra={"perplexity": 10.0})
    return Run(label=target, target=target, model="m", workload=workload, summary=summary)


def _result(tmp_path: Path, name: str, tok_s: float, ttft_p99_s: float = 0.1, peer_tok_s: float = 100.0,
            device: dict | None = None, workload=WORKLOAD) -> Path:
    result = BenchResult(run_id=name, kind="offline", device=device or {"kind": "cpu", "name": "x86_64"},
                         runs=[_run("engine", tok_s, ttft_p99_s, workload),
                               _run("transformers-generate", peer_tok_s, 0.2, workload)])
    return result.write(tmp_path / name / "result.json")


GATES = {"min_repeats": 3, "gates": [
    {"name": "tok_s", "kind": "absolute", "field": "output_throughput", "direction": "higher", "tolerance": 0.85},
    {"name": "ttft_p99", "kind": "absolute", "field": "ttft.p99", "direction": "lower", "tolerance": 1.2},
    {"name": "vs_generate", "kind": "ratio_to_peer", "peer": "transformers-generate",
     "field": "output_throughput", "direction": "higher", "tolerance": 0.85, "limit": 1.0},
]}


def _gates(tmp_path: Path, spec=None) -> Path:
    path = tmp_path / "gates.yaml"
    path.write_text(yaml.safe_dump(spec or GATES))
    return path


def _gate(*args) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, ["gate", *map(str, args)])
    return res.exit_code, res.stdout, res.stderr


def _judge(tmp_path, currents, baseline, spec=None):
    from toolkit.gate import load_result

    loaded = {str(p): load_result(p) for p in currents}
    return {v.gate.name: v for v in judge(load_gates(_gates(tmp_path, spec)), loaded, load_result(baseline))}


# ---- medians and directions ----------------------------------------------------------------------

def test_medians_by_hand_and_each_direction(tmp_path):
    base = _result(tmp_path, "base", 200.0, 0.100)
    # tok/s 150, 190, 400 -> median 190 >= 0.85 x 200 = 170; TTFT 90, 130, 500 ms -> median 130 > 120
    cur = [_result(tmp_path, "a", 150.0, 0.090), _result(tmp_path, "b", 190.0, 0.130),
           _result(tmp_path, "c", 400.0, 0.500)]
    v = _judge(tmp_path, cur, base)
    assert v["tok_s"].current == 190.0 and v["tok_s"].bound == pytest.approx(170.0) and v["tok_s"].passed
    assert v["ttft_p99"].current == pytest.approx(130.0)  # seconds shown as ms
    assert v["ttft_p99"].bound == pytest.approx(120.0) and v["ttft_p99"].passed is False
    # ratios 1.5, 1.9, 4.0 -> 1.9; baseline 2.0 -> bound max(0.85 x 2.0, limit 1.0) = 1.7
    assert v["vs_generate"].current == pytest.approx(1.9) and v["vs_generate"].bound == pytest.approx(1.7)
    assert v["vs_generate"].passed


def test_higher_fails_below_and_lower_passes_under(tmp_path):
    base = _result(tmp_path, "base", 200.0, 0.100)
    cur = [_result(tmp_path, n, tok, 0.110) for n, tok in (("a", 160.0), ("b", 169.0), ("c", 300.0))]
    v = _judge(tmp_path, cur, base)
    assert v["tok_s"].current == 169.0 and v["tok_s"].passed is False  # 169 < 170
    assert v["ttft_p99"].current == pytest.approx(110.0) and v["ttft_p99"].passed  # 110 <= 120


def test_ratio_gate_cancels_a_machine_slowed_on_both_sides(tmp_path):
    # Everything twice as slow (a busy machine): the absolute gate fails, the same-run ratio holds.
    base = _result(tmp_path, "base", 200.0, peer_tok_s=100.0)
    cur = [_result(tmp_path, n, 100.0, peer_tok_s=50.0) for n in "abc"]
    v = _judge(tmp_path, cur, base)
    assert v["tok_s"].passed is False
    assert v["vs_generate"].current == pytest.approx(2.0) and v["vs_generate"].passed


def test_ratio_limit_without_baseline(tmp_path):
    spec = {"min_repeats": 1, "gates": [{"name": "r", "kind": "ratio_to_peer", "peer": "transformers-generate",
                                         "field": "output_throughput", "direction": "higher", "limit": 1.0}]}
    slower = _result(tmp_path, "a", 90.0)
    code, out, err = _gate(slower, "--gates", _gates(tmp_path, spec))
    assert code == 1 and "FAIL" in out
    code, out, err = _gate(_result(tmp_path, "b", 110.0), "--gates", _gates(tmp_path, spec))
    assert code == 0, err


# ---- device classes ------------------------------------------------------------------------------

H100 = {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "count": 1}


def test_device_class():
    assert device_class(BenchResult(run_id="x", kind="offline", device={"kind": "cpu", "name": "x86_64"})) == "cpu"
    assert device_class(BenchResult(run_id="x", kind="offline", device=H100)) == "nvidia-h100-80gb-hbm3"
    assert device_class(BenchResult(run_id="x", kind="offline", device={**H100, "count": 8})).endswith("-x8")
    epyc = {"kind": "cpu", "name": "x86_64", "cpu_model": "AMD EPYC 9R14 96-Core Processor", "cpu_count": 2}
    assert device_class(BenchResult(run_id="x", kind="offline", device=epyc)) == "cpu-amd-epyc-9r14-96-core-processor-2c"


def test_cpu_gate_with_a_baseline_of_another_cpu_is_skipped_not_judged(tmp_path):
    """`device_class: cpu-*` gates judge a CPU machine only against a baseline of its own class: a CI
    runner with another processor judges the ratio gates and says why the absolute ones were left out."""
    spec = {"min_repeats": 1, "gates": [{**GATES["gates"][0], "device_class": "cpu-*"}, GATES["gates"][2]]}
    epyc = {"kind": "cpu", "name": "x86_64", "cpu_model": "AMD EPYC", "cpu_count": 2}
    xeon = {**epyc, "cpu_model": "Intel Xeon"}
    base = _result(tmp_path, "base", 200.0, device=epyc)
    slower_here = _result(tmp_path, "here", 100.0, device=epyc, peer_tok_s=50.0)
    v = _judge(tmp_path, [slower_here], base, spec)
    assert v["tok_s"].passed is False and v["vs_generate"].passed  # same class: judged, and 100 < 0.85 x 200
    elsewhere = _result(tmp_path, "elsewhere", 100.0, device=xeon, peer_tok_s=50.0)
    v = _judge(tmp_path, [elsewhere], base, spec)
    assert v["tok_s"].passed is None and "cpu-amd-epyc-2c" in v["tok_s"].note and "cpu-intel-xeon-2c" in v["tok_s"].note
    assert v["vs_generate"].passed
    on_gpu = _result(tmp_path, "gpu", 100.0, device=H100)
    assert _judge(tmp_path, [on_gpu], _result(tmp_path, "gbase", 100.0, device=H100), spec)["tok_s"].passed is None


def test_absolute_gate_against_baseline_of_other_device_class_is_an_error(tmp_path):
    # An error, not a skip: a gate quietly not judged would let a regression through.
    base = _result(tmp_path, "base", 200.0, device=H100)
    cur = [_result(tmp_path, n, 200.0) for n in "abc"]
    code, out, err = _gate(*cur, "--baseline", base, "--gates", _gates(tmp_path))
    assert code == 2 and err.count("\n") == 1
    assert "same device class" in err and "nvidia-h100" in err and "cpu" in err


def test_gate_for_another_device_class_is_skipped(tmp_path):
    spec = {"min_repeats": 1, "gates": [
        {**GATES["gates"][0], "device_class": "nvidia-h100-80gb-hbm3"}, GATES["gates"][2]]}
    base, cur = _result(tmp_path, "base", 200.0), _result(tmp_path, "a", 200.0)
    v = _judge(tmp_path, [cur], base, spec)
    assert v["tok_s"].passed is None and "nvidia-h100" in v["tok_s"].note
    assert v["vs_generate"].passed


# ---- bad input: exit 2, one line -----------------------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "not-json", "not-a-result", "no-runs", "missing-baseline",
                                  "bad-gates", "flipped-tolerance", "unknown-key", "too-few", "no-baseline",
                                  "other-workload", "no-such-run", "no-such-field", "no-results"])
def test_bad_input_exits_2_with_one_line(tmp_path, case):
    base = _result(tmp_path, "base", 200.0)
    cur = [_result(tmp_path, n, 200.0) for n in "abc"]
    gates = _gates(tmp_path)
    args = [*cur, "--baseline", base, "--gates", gates]
    expect = {"missing": "no such file", "not-json": "not a JSON result", "not-a-result": "not a BenchResult",
              "no-runs": "no runs", "missing-baseline": "baseline", "bad-gates": "not readable YAML",
              "flipped-tolerance": "must be <= 1", "unknown-key": "unknown key", "too-few": "at least 3",
              "no-baseline": "--baseline", "other-workload": "another model or workload",
              "no-such-run": "no run has", "no-such-field": "no 'tpot.p99'", "no-results": "give the results"}[case]
    bad = tmp_path / "bad.json"
    if case == "missing":
        args[0] = tmp_path / "nope.json"
    elif case == "not-json":
        bad.write_text("{not json")
        args[0] = bad
    elif case == "not-a-result":
        bad.write_text(json.dumps({"run_id": "x", "runs": [{"label": "engine"}]}))
        args[0] = bad
    elif case == "no-runs":
        BenchResult(run_id="x", kind="offline").write(bad)
        args[0] = bad
    elif case == "missing-baseline":
        args[4] = tmp_path / "nope.json"
    elif case == "bad-gates":
        gates.write_text("gates: [unclosed")
    elif case == "flipped-tolerance":
        _gates(tmp_path, {"gates": [{**GATES["gates"][0], "direction": "higher", "tolerance": 1.15}]})
    elif case == "unknown-key":
        _gates(tmp_path, {"gates": [{**GATES["gates"][0], "treshold": 0.9}]})
    elif case == "too-few":
        args = args[1:]
    elif case == "no-baseline":
        args = args[:3] + args[5:]
    elif case == "other-workload":
        args[4] = _result(tmp_path, "other", 200.0, workload={"name": "mixed", "num_requests": 16})
    elif case == "no-such-run":
        _gates(tmp_path, {"gates": [{**GATES["gates"][0], "run": "vllm"}]})
    elif case == "no-such-field":
        _gates(tmp_path, {"gates": [{**GATES["gates"][1], "field": "tpot.p99"}]})
    elif case == "no-results":
        args = ["--baseline", base, "--gates", gates]
    code, out, err = _gate(*args)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and expect in err, err
    assert "Traceback" not in out + err


def test_committed_gates_file_loads():
    spec = load_gates(REPO / "ci" / "gates.yaml")
    assert spec.min_repeats >= 3 and {g.kind for g in spec.gates} == {"absolute", "ratio_to_peer"}
    with pytest.raises(GateInputError):
        load_gates(REPO / "ci" / "nope.yaml")


# ---- outputs -------------------------------------------------------------------------------------

class _Html(HTMLParser):
    """Tags opened and closed, to see that the page is balanced."""

    VOID = {"meta", "br", "img", "link", "input", "hr"}

    def __init__(self):
        super().__init__()
        self.stack, self.cells = [], []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, tag

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "td":
            self.cells.append(data.strip())


def test_markdown_html_and_benchmark_json(tmp_path):
    base = _result(tmp_path, "base", 200.0, 0.100)
    cur = [_result(tmp_path, n, tok, 0.300) for n, tok in (("a", 210.0), ("b", 190.0), ("c", 205.0))]
    md, page, bench = tmp_path / "g.md", tmp_path / "g.html", tmp_path / "bench"
    code, out, err = _gate(*cur, "--baseline", base, "--gates", _gates(tmp_path), "--markdown", md,
                           "--html", page, "--benchmark-json", bench)
    assert code == 1, err  # TTFT 300 ms against 1.2 x 100 ms
    assert "ttft_p99" in out and "FAIL" in out

    lines = md.read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 3 and len({line.count("|") - line.count("\\|") for line in table}) == 1
    assert "1 of 3 gates failed: ttft_p99" in lines[0]
    assert any("❌ FAIL" in line and "ttft_p99" in line for line in table)

    parser = _Html()
    parser.feed(page.read_text())
    assert parser.stack == [] and "FAIL" in parser.cells and "205 tok/s" in parser.cells

    bigger = json.loads((bench / "bigger_is_better.json").read_text())
    smaller = json.loads((bench / "smaller_is_better.json").read_text())
    assert {e["name"] for e in bigger} == {"tok_s", "vs_generate"} and [e["name"] for e in smaller] == ["ttft_p99"]
    for entry in bigger + smaller:
        assert isinstance(entry["name"], str) and isinstance(entry["unit"], str)
        assert isinstance(entry["value"], float)
    assert next(e for e in bigger if e["name"] == "tok_s")["value"] == 205.0
    assert smaller[0]["unit"] == "ms" and smaller[0]["value"] == pytest.approx(300.0)


def test_calibrate_proposes_from_the_spread(tmp_path):
    # tok/s 100, 102, 98, 100, 130: median 100, MAD 0 ... |dev| 0,2,2,0,30 -> MAD 2, x1.4826 x3 = 8.9 %
    # for one run; the gates judge the median of 3, whose spread is 1.2533 / sqrt(3) of that: 6.4 %
    cur = [_result(tmp_path, f"r{i}", tok) for i, tok in enumerate((100.0, 102.0, 98.0, 100.0, 130.0))]
    loaded = {str(p): BenchResult.read(p) for p in cur}
    proposals = {p.gate.name: p for p in calibrate(load_gates(_gates(tmp_path)), loaded)}
    assert proposals["tok_s"].median == 100.0
    assert proposals["tok_s"].tolerance == pytest.approx(1 - 3 * 1.4826 * 2 / 100 * 1.2533 / 3 ** 0.5, abs=1e-3)
    assert proposals["ttft_p99"].tolerance == 1.05  # no spread at all: the 5 % floor
    code, out, err = _gate("--calibrate", *cur, "--gates", _gates(tmp_path))
    assert code == 0 and "tok_s: tolerance: 0.936" in out
    assert "MAD spread of the median of 3 runs" in " ".join(out.split())  # the title wraps at narrow widths
    single = {p.gate.name: p for p in calibrate(load_gates(_gates(tmp_path, {**GATES, "min_repeats": 1})), loaded)}
    assert single["tok_s"].tolerance == pytest.approx(1 - 3 * 1.4826 * 2 / 100, abs=1e-3)  # one run's own spread
    # a GPU's absolute gate proposes nothing from CPU results
    gpu_only = {"gates": [{**GATES["gates"][0], "name": "gpu_tok_s", "device_class": "nvidia-*"}, GATES["gates"][2]]}
    names = [p.gate.name for p in calibrate(load_gates(_gates(tmp_path, gpu_only)), loaded)]
    assert names == ["vs_generate"]


# ---- acceptance: the real engine, normal and slowed ----------------------------------------------

SMALL = ["--workload", "mixed", "--num-requests", "4", "--input-len", "16:48", "--output-len", "12:24",
         "--peer", "generate", "--device", "cpu", "--no-report"]
DELAY_MS = "100"  # per step: ~20 steps a run, so ~2 s on a run the normal engine does in well under that


def _bench(out: Path, run_id: str, *extra: str) -> Path:
    proc = subprocess.run([sys.executable, "-m", "toolkit", "bench", "offline", *SMALL, *extra,
                           "-o", str(out), "--run-id", run_id], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / run_id / "result.json"


@pytest.mark.slow
def test_gate_fails_a_slowed_engine_and_passes_the_normal_one(tmp_path):
    started = time.perf_counter()
    # Normal and slowed repeats interleaved, so a neighbour's load on the shared machine falls on both.
    normal, slowed = [], []
    for i in range(3):
        normal.append(_bench(tmp_path, f"normal-{i}"))
        slowed.append(_bench(tmp_path, f"slowed-{i}", "--debug-step-delay-ms", DELAY_MS))
    slowed_config = BenchResult.read(slowed[0]).runs[0].config
    assert slowed_config["debug_step_delay_ms"] == float(DELAY_MS)
    # The baseline is the median normal repeat (by the engine's ratio to its peer): one of the same
    # device class and workload, measured minutes earlier on this machine, as representative as a
    # committed baseline is (the committed CPU one is for the full mixed workload). The first repeat
    # would do only on a quiet machine: on 4 short requests the peer's time varies, and a first ratio of
    # 2.55 against a median of 1.91 once failed the normal runs.
    def ratio(path):
        runs = {r.target: r.summary.output_throughput for r in BenchResult.read(path).runs}
        return runs["engine"] / runs["transformers-generate"]

    baseline = sorted(normal, key=ratio)[1]
    gates = REPO / "ci" / "gates.yaml"
    code, out, err = _gate(*normal, "--baseline", baseline, "--gates", gates)
    assert code == 0, out + err
    code, out, err = _gate(*slowed, "--baseline", baseline, "--gates", gates)
    assert code == 1, out + err
    assert "cpu/engine/output_throughput" in out and "engine_over_generate/output_throughput" in out
    print(f"six short benches and two gates in {time.perf_counter() - started:.0f} s\n{out}")


def test_step_delay_must_not_be_negative():
    from engine.config import EngineConfig
    from engine.errors import InvalidRequestError

    for bad in (-1.0, float("nan")):
        with pytest.raises(InvalidRequestError, match="debug_step_delay_ms"):
            EngineConfig(debug_step_delay_ms=bad)
    assert EngineConfig(debug_step_delay_ms=100).to_flags() == ["--debug-step-delay-ms", "100"]
