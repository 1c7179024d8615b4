"""Performance gates (`opsctl gate`): read a gates file and result files, judge each gate on medians.

A gate names one figure of a BenchResult (which run, which summary field) and how it may move:
  absolute        the engine's own figure (output tok/s, p99 TTFT) against the baseline's, on the same
                  device class only: absolute times do not compare across machines of different kinds
  ratio_to_peer   the engine's figure over its peer's in the same result file (engine against
                  transformers on the same model and workload, measured minutes apart on the same
                  machine), so load on a shared machine slows both sides and largely cancels out

Each gate is judged on the median over the current result files (N repeats of the bench), so one
run slowed by a neighbour does not fail a gate. Bad input (a missing or malformed file, a gate that
does not fit the results, a baseline of another device class or workload) is a GateInputError, which
the command turns into one line and exit code 2; a failed gate is a Verdict with passed False.
Rendering the verdicts is toolkit.gate_report's job.
"""
from __future__ import annotations

import fnmatch
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from .report.schema import BenchResult, Run

KINDS = ("absolute", "ratio_to_peer")
DIRECTIONS = ("higher", "lower")
# Latency statistics are stored in seconds and shown in ms; everything else as stored.
_LATENCIES = ("ttft", "tpot", "itl", "e2e")
_UNITS = {"output_throughput": "tok/s", "input_throughput": "tok/s", "total_token_throughput": "tok/s",
          "request_throughput": "req/s", "goodput": "req/s", "duration_s": "s"}


class GateInputError(Exception):
    """Inputs that cannot be judged: the command prints the message as one line and exits 2."""


@dataclass(frozen=True)
class Gate:
    """One line of the gates file (see ci/gates.yaml for the meaning of each key)."""

    name: str
    field: str  # a RunSummary field: output_throughput, ttft.p99, extra.perplexity
    direction: str  # higher | lower: which way is better
    kind: str = "absolute"
    run: str = "engine"  # a run's label, else its target
    peer: str | None = None  # ratio_to_peer: the run divided by
    tolerance: float | None = None  # current against tolerance x baseline
    limit: float | None = None  # ratio_to_peer: a fixed bound that needs no baseline
    device_class: str | None = None  # absolute: judged only on results of this device class

    @property
    def unit(self) -> str:
        if self.kind == "ratio_to_peer":
            return "x"
        head = self.field.split(".")[0]
        return "ms" if head in _LATENCIES else _UNITS.get(head, "")

    @property
    def needs_baseline(self) -> bool:
        return self.tolerance is not None


@dataclass(frozen=True)
class GateSpec:
    gates: list[Gate]
    min_repeats: int = 1


@dataclass
class Verdict:
    """One gate judged: the median of the current samples against its bound."""

    gate: Gate
    samples: list[float] = field(default_factory=list)  # one per current result file
    current: float | None = None  # their median
    baseline: float | None = None
    bound: float | None = None  # the value current must reach (higher) or stay under (lower)
    passed: bool | None = None  # None: skipped (see note)
    note: str = ""

    @property
    def status(self) -> str:
        return "skip" if self.passed is None else "pass" if self.passed else "FAIL"

    @property
    def change(self) -> float | None:
        """current / baseline - 1, e.g. -0.12 for 12 % lower."""
        if self.current is None or not self.baseline:
            return None
        return self.current / self.baseline - 1


# ---- the gates file ------------------------------------------------------------------------------

def load_gates(path: str | Path) -> GateSpec:
    """ci/gates.yaml read and checked; every mistake is a GateInputError naming the gate."""
    data = _load_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("gates"), list) or not data["gates"]:
        raise GateInputError(f"{path}: needs a non-empty list under `gates:`")
    min_repeats = data.get("min_repeats", 1)
    if not isinstance(min_repeats, int) or min_repeats < 1:
        raise GateInputError(f"{path}: min_repeats must be an integer >= 1 (got {min_repeats!r})")
    gates = [_gate(entry, i, path) for i, entry in enumerate(data["gates"])]
    names = [g.name for g in gates]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise GateInputError(f"{path}: two gates are named {duplicate!r}")
    return GateSpec(gates, min_repeats)


def _load_yaml(path: str | Path):
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise GateInputError(f"{path}: no such gates file") from None
    except (OSError, yaml.YAMLError) as e:
        raise GateInputError(f"{path}: not readable YAML ({_first_line(e)})") from None


def _gate(entry, index: int, path) -> Gate:
    where = f"{path}: gate {index + 1}"
    if not isinstance(entry, dict):
        raise GateInputError(f"{where}: must be a mapping of keys (name, field, direction, ...)")
    known = set(Gate.__dataclass_fields__)
    unknown = sorted(set(entry) - known)
    if unknown:
        raise GateInputError(f"{where}: unknown key {unknown[0]!r}; keys are {', '.join(sorted(known))}")
    for key in ("name", "field", "direction"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise GateInputError(f"{where}: `{key}` is required (a string)")
    where = f"{path}: gate {entry['name']!r}"
    for key in ("tolerance", "limit"):
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise GateInputError(f"{where}: `{key}` must be a number > 0 (got {value!r})")
    try:
        gate = Gate(**entry)
    except TypeError as e:
        raise GateInputError(f"{where}: {e}") from None
    if gate.kind not in KINDS:
        raise GateInputError(f"{where}: kind {gate.kind!r}; use {' or '.join(KINDS)}")
    if gate.direction not in DIRECTIONS:
        raise GateInputError(f"{where}: direction {gate.direction!r}; use {' or '.join(DIRECTIONS)}")
    if gate.tolerance is None and gate.limit is None:
        raise GateInputError(f"{where}: give a `tolerance` (against the baseline) or a `limit`")
    # A tolerance on the wrong side of 1 would pass a regression: a flipped direction, caught here.
    if gate.tolerance is not None and (gate.tolerance > 1 if gate.direction == "higher" else gate.tolerance < 1):
        side = "<= 1 (higher is better: current >= tolerance x baseline)" if gate.direction == "higher" else \
            ">= 1 (lower is better: current <= tolerance x baseline)"
        raise GateInputError(f"{where}: tolerance {gate.tolerance:g} must be {side}")
    if gate.kind == "ratio_to_peer":
        if not gate.peer:
            raise GateInputError(f"{where}: a ratio_to_peer gate needs `peer` (the run it divides by)")
        if gate.device_class:
            raise GateInputError(f"{where}: device_class is for absolute gates; a ratio compares across machines")
    elif gate.peer or gate.limit is not None:
        raise GateInputError(f"{where}: `peer` and `limit` are for ratio_to_peer gates; an absolute gate "
                             "compares with the baseline (absolute limits do not carry across machines)")
    return gate


# ---- result files --------------------------------------------------------------------------------

def load_result(path: str | Path, role: str = "result") -> BenchResult:
    """A BenchResult file, or a GateInputError saying in one line what is wrong with it."""
    path = Path(path)
    if path.is_dir():  # a run folder: reports/<run-id>/ holds result.json
        path = path / "result.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GateInputError(f"{role} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GateInputError(f"{role} {path}: not a JSON result file ({_first_line(e)})") from None
    try:
        result = BenchResult.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "top level"
        raise GateInputError(f"{role} {path}: not a BenchResult ({where}: {err['msg']})") from None
    if not result.runs:
        raise GateInputError(f"{role} {path}: holds no runs")
    return result


def device_class(result: BenchResult) -> str:
    """What absolute figures are comparable across: the GPU's name (and count), or for a CPU its model
    and core count ("cpu-amd-epyc-2c"; plain "cpu" for results that did not record the model), slugged."""
    dev = result.device
    if dev.get("kind") != "cuda":
        if not dev.get("cpu_model") or not dev.get("cpu_count"):
            return "cpu"
        return f"cpu-{_slug(dev['cpu_model'])}-{int(dev['cpu_count'])}c"
    count = int(dev.get("count") or 1)
    return _slug(dev.get("name", "gpu")) if count == 1 else f"{_slug(dev.get('name', 'gpu'))}-x{count}"


def _slug(text) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")


def class_matches(pattern: str, device: str) -> bool:
    """A gate's device_class against a result's: exact, or a shell pattern ("cpu*", "nvidia-h200*")."""
    return fnmatch.fnmatchcase(device, pattern)


def find_run(result: BenchResult, name: str, source: str) -> Run:
    """The run labelled `name`, else the only run whose target is `name`."""
    by_label = [r for r in result.runs if r.label == name]
    if by_label:
        return by_label[0]
    by_target = [r for r in result.runs if r.target == name]
    if len(by_target) == 1:
        return by_target[0]
    have = ", ".join(f"{r.label!r} ({r.target})" for r in result.runs)
    why = "several runs have" if by_target else "no run has"
    raise GateInputError(f"{source}: {why} label or target {name!r}; runs: {have}")


def read_field(run: Run, name: str, source: str) -> float:
    """A summary figure by dotted name (ttft.p99, extra.perplexity); latencies converted to ms."""
    value = run.summary
    for part in name.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        else:
            value = getattr(value, part, None)
        if value is None:
            raise GateInputError(f"{source}: run {run.label!r} has no {name!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GateInputError(f"{source}: {name!r} of run {run.label!r} is not a number")
    return float(value) * (1000 if name.split(".")[0] in _LATENCIES else 1)


def measure(gate: Gate, result: BenchResult, source: str) -> float:
    """The gate's figure in one result file: the run's, or the run's over its peer's."""
    value = read_field(find_run(result, gate.run, source), gate.field, source)
    if gate.kind == "absolute":
        return value
    peer = read_field(find_run(result, gate.peer, source), gate.field, source)
    if peer == 0:
        raise GateInputError(f"{source}: the peer's {gate.field!r} is 0, no ratio to take")
    return value / peer


def _workload(gate: Gate, result: BenchResult, source: str) -> tuple:
    run = find_run(result, gate.run, source)
    return run.model, json.dumps(run.workload, sort_keys=True)


# ---- judging -------------------------------------------------------------------------------------

def judge(spec: GateSpec, current: dict[str, BenchResult], baseline: BenchResult | None = None,
          baseline_name: str = "baseline") -> list[Verdict]:
    """Every gate judged on the median over the current results (source name -> result)."""
    if len(current) < spec.min_repeats:
        raise GateInputError(f"{len(current)} result file(s) given; the gates ask for at least "
                             f"{spec.min_repeats} repeats (the median of them is judged)")
    classes = {name: device_class(r) for name, r in current.items()}
    if len(set(classes.values())) > 1:
        raise GateInputError("the results come from different device classes: "
                             + ", ".join(f"{n} ({c})" for n, c in classes.items()))
    here = next(iter(classes.values()))
    verdicts = [_judge_one(g, current, baseline, baseline_name, here) for g in spec.gates]
    if all(v.passed is None for v in verdicts):
        raise GateInputError(f"no gate applies to results from device class {here!r} with this baseline")
    return verdicts


def _judge_one(gate: Gate, current: dict[str, BenchResult], baseline: BenchResult | None,
               baseline_name: str, here: str) -> Verdict:
    verdict = Verdict(gate)
    if gate.kind == "absolute" and gate.device_class:
        if not class_matches(gate.device_class, here):
            verdict.note = f"for {gate.device_class} only; results are from {here}"
            return verdict  # skipped: the gates file keeps each device class's absolute gates side by side
        if baseline is not None and device_class(baseline) != here:
            # Same kind of device, another machine: its absolute timings say nothing about this one's.
            verdict.note = (f"the baseline is from {device_class(baseline)}, the results from {here}: "
                            f"rerun the baseline on this machine class to judge it")
            return verdict
    workloads = {_workload(gate, r, name) for name, r in current.items()}
    if len(workloads) > 1:
        raise GateInputError(f"gate {gate.name!r}: the result files measured different models or workloads")
    verdict.samples = [measure(gate, r, name) for name, r in current.items()]
    verdict.current = statistics.median(verdict.samples)
    bounds = []
    if gate.limit is not None:
        bounds.append(gate.limit)
    if gate.needs_baseline:
        if baseline is None:
            raise GateInputError(f"gate {gate.name!r} compares with a baseline: give --baseline FILE")
        _check_baseline(gate, baseline, baseline_name, here, workloads.pop())
        verdict.baseline = measure(gate, baseline, baseline_name)
        bounds.append(gate.tolerance * verdict.baseline)
    # Both a limit and a tolerance: the stricter bound holds.
    verdict.bound = max(bounds) if gate.direction == "higher" else min(bounds)
    verdict.passed = verdict.current >= verdict.bound if gate.direction == "higher" else \
        verdict.current <= verdict.bound
    return verdict


def _check_baseline(gate: Gate, baseline: BenchResult, name: str, here: str, workload: tuple) -> None:
    theirs = device_class(baseline)
    if gate.kind == "absolute" and theirs != here:
        raise GateInputError(f"gate {gate.name!r}: absolute gates need a baseline from the same device class; "
                             f"{name} is from {theirs}, the results from {here}")
    if _workload(gate, baseline, name) != workload:
        model, _ = _workload(gate, baseline, name)
        raise GateInputError(f"gate {gate.name!r}: {name} measured another model or workload than the results "
                             f"(baseline model {model!r}); rerun the baseline with the same bench options")


def all_passed(verdicts: list[Verdict]) -> bool:
    return all(v.passed is not False for v in verdicts)


# ---- calibration ---------------------------------------------------------------------------------

MIN_SPREAD = 0.05  # never propose a tolerance tighter than 5 %: CI machines drift by that much


@dataclass
class Proposal:
    gate: Gate
    median: float
    spread: float  # 3 x the scaled MAD of the judged median, relative to the median
    tolerance: float


def median_factor(repeats: int) -> float:
    """How much narrower the median of `repeats` runs spreads than one run: ~1.2533 / sqrt(n) for
    normal noise (the median's standard error), never more than one run's own spread."""
    return min(1.0, 1.2533 / math.sqrt(repeats))


def calibrate(spec: GateSpec, results: dict[str, BenchResult]) -> list[Proposal]:
    """Tolerances from the spread of N results of one configuration: max(3 x MAD-based spread, 5 %).

    The MAD (scaled by 1.4826 to estimate a standard deviation) ignores a single outlier run, where
    a standard deviation would widen every tolerance for it. A gate judges the median of the gates
    file's min_repeats runs, so the spread proposed is that median's (median_factor), not one run's.
    """
    if len(results) < 3:
        raise GateInputError(f"--calibrate needs at least 3 result files of one configuration (got {len(results)})")
    proposals = []
    classes = {device_class(r) for r in results.values()}
    for gate in spec.gates:
        if gate.tolerance is None:
            continue  # a fixed limit is a decision, not a measurement
        if gate.kind == "absolute" and gate.device_class and not any(class_matches(gate.device_class, c)
                                                                      for c in classes):
            continue  # another device class's gate: these results say nothing about its spread
        samples = [measure(gate, r, name) for name, r in results.items()]
        median = statistics.median(samples)
        mad = 1.4826 * statistics.median(abs(s - median) for s in samples)
        spread = max(3 * mad * median_factor(spec.min_repeats) / median if median else 0.0, MIN_SPREAD)
        tolerance = 1 - spread if gate.direction == "higher" else 1 + spread
        proposals.append(Proposal(gate, median, spread, round(max(tolerance, 0.01), 3)))
    return proposals


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
