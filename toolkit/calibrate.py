"""The planner's calibration from committed runs: `python -m toolkit.calibrate PATH... [--write] [--check]`.

Reads the runs under each PATH (result.json of `opsctl bench offline` and `opsctl bench --url`, the
JSON of `python -m toolkit.bench.http_vs_offline`), matches each to a hardware profile by the
device name it recorded, and derives per profile (device class) the `calibration:` block of
profiles/<name>.yaml (toolkit.profiles.Calibration), every figure with the files and figures it
came from:

- usable_memory_gib: the memory torch reported (result.json device.memory_gib); the smallest seen.
- decode_bandwidth_efficiency: per batch-1 decode workload (one request: decode-b1, long-context),
  the engine's decode tok/s over the planner's roofline at the profile's bandwidth() for the same
  model and mean context (prompt + output / 2, as the bench counts it); the mean over workloads.
- prefill_efficiency: per ttft workload, the prompt's prefill FLOPs (predictions.prefill_flops) / its
  median TTFT, over the profile's tensor_tflops(); the mean over workloads.
- gemm_efficiency: per big-batch workload (bench offline throughput with several requests; the
  plain engine of http_vs_offline), the fraction of tensor_tflops() at which
  predictions.predict_throughput gives the measured output tok/s (bisection), with the card's decode
  efficiency resolved as the planner resolves it (its own, else the default of the other cards);
  the mean over workloads.

Of several committed runs of one workload on one card (same model, request count, lengths and
batch), the fastest counts: the slower ones are older engines or fallback paths (the torch path),
and other load on a shared machine only ever slows a run down (best-of-N, as `bench offline
--repeats` keeps). Runs through a server (`opsctl bench --url`, the HTTP side of http_vs_offline)
measure the server too: they calibrate nothing, and are checked as "served" rows, the planner's
throughput against what `opsctl serve` gave.

Check: each workload is also predicted from a calibration derived without it (leave one workload
out: from the card's other workloads, else from the default of the other cards), and both errors
are printed. --write rewrites the calibration block of each profile that has runs under PATH (the
others are left as they are); --check exits 1 when a profile's block differs from what the runs
give (stale figures).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from .model_sizes import ModelShape, PlanError, count_params, weight_bytes
from .predictions import DecodePrediction, predict_decode, predict_prefill, predict_throughput, prefill_flops
from .profiles import (Calibration, Efficiency, HardwareProfile, ProfileError, efficiency, load_profiles,
                       profile_for_gpu_name, profiles_dir)

REPO = Path(__file__).resolve().parent.parent
GOAL = 0.15  # the prediction error the planner is held to (issue 12), batch-1 decode and throughput
HEADER = "# Derived from committed runs by `python -m toolkit.calibrate`; do not edit by hand."
DIGITS = 3  # efficiencies are kept to 3 decimals: finer than any run repeats
_GEMM_BOUNDS = (1e-3, 1.5)  # the range Calibration accepts


class CalibrationError(ValueError):
    """No runs under the paths given, or a profile the calibration cannot be written to."""


@dataclass(frozen=True)
class Observation:
    """One measured figure of the engine that a calibration figure is derived from."""

    kind: str  # "decode" (tok/s at batch 1), "prefill" (TTFT s), "throughput" or "served" (output tok/s)
    path: str  # the file, relative to the repository root where it lies inside it
    commit: str
    profile: str
    model: str
    workload: str  # the runs of one card, kind and workload measure the same thing
    measured: float
    batch_size: int
    prompt_len: float
    output_len: float

    @property
    def group(self) -> tuple[str, str, str, str]:
        return self.profile, self.kind, self.model, self.workload

    @property
    def context_len(self) -> float:
        return self.prompt_len + self.output_len / 2

    def better_than(self, other: "Observation") -> bool:
        return self.measured < other.measured if self.kind == "prefill" else self.measured > other.measured


@dataclass(frozen=True)
class MemoryReading:
    profile: str
    path: str
    gib: float


@dataclass
class Runs:
    """What the paths hold: observations, memory readings, and what was left out (and why)."""

    observations: list[Observation]
    memory: list[MemoryReading]
    skipped: dict[str, int]


# -- reading runs ------------------------------------------------------------------------------
def collect(paths: Iterable[str | Path], profiles: dict[str, HardwareProfile]) -> Runs:
    """Every observation and memory reading in the JSON files under `paths` (files or folders)."""
    runs = Runs([], [], defaultdict(int))
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.rglob("*.json"))
        elif path.is_file():
            files.append(path)
        else:
            raise CalibrationError(f"no such file or folder: {path}")
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            runs.skipped["not readable JSON"] += 1
            continue
        if isinstance(data, dict) and isinstance(data.get("runs"), list) and isinstance(data.get("device"), dict):
            _read_result(file, data, profiles, runs)
        elif isinstance(data, dict) and data.get("benchmark") == "http_vs_offline":
            _read_http_vs_offline(file, data, profiles, runs)
        else:
            runs.skipped["other JSON (kernel benches, profiles of a step, reports)"] += 1
    return runs


def _read_result(file: Path, data: dict, profiles, runs: Runs) -> None:
    if str(data.get("git_commit") or "").endswith("+wip"):
        # measured on an uncommitted tree: no commit reproduces it, so it calibrates nothing
        runs.skipped["runs of an uncommitted tree (git_commit ...+wip)"] += 1
        return
    device = data["device"]
    profile = _profile(device.get("name"), profiles)
    if profile is None:
        runs.skipped["device no profile matches (or the CPU)"] += 1
        return
    if device.get("kind") == "cuda" and isinstance(device.get("memory_gib"), (int, float)):
        runs.memory.append(MemoryReading(profile, _shown(file), float(device["memory_gib"])))
    for run in data["runs"]:
        if run.get("target") == "http":
            _read_served(file, data, run, profile, runs)
            continue
        if run.get("target") != "engine":
            runs.skipped["runs of a peer (not the engine)"] += 1
            continue
        if not _sizeable(run.get("model")):
            runs.skipped["engine runs of a model that cannot be sized (not preset:NAME or a local directory)"] += 1
            continue
        config = run.get("config") or {}
        if config.get("model_format") in ("int8", "awq") or config.get("quant_policy"):
            # the planner's efficiencies are those of 16-bit weights and KV; quantized kernels differ
            runs.skipped["engine runs with quantized weights or KV cache"] += 1
            continue
        if (config.get("tp") or 1) > 1:
            # the efficiencies are one card's: a tp run's time also holds the collectives, which the
            # planner adds from the link (predictions.tp_comm), so it would count them twice
            runs.skipped["engine runs over several GPUs (tp > 1)"] += 1
            continue
        workload, summary = run.get("workload") or {}, run.get("summary") or {}
        extra = summary.get("extra") or {}
        done, duration = summary.get("num_completed") or 0, summary.get("duration_s") or 0
        n = workload.get("num_requests") or 0
        key = (f"{workload.get('name')}: {n} request{'s' * (n != 1)}, prompt {_span(workload.get('input_len'))}, "
               f"output {_span(workload.get('output_len'))}")
        common = dict(path=_shown(file), commit=str(data.get("git_commit") or "?"), profile=profile,
                      model=str(run.get("model")))
        if workload.get("mode") == "ttft" and extra.get("ttft_ms_median"):
            prompt = workload.get("prompt_tokens") or _first(workload.get("input_len"))
            runs.observations.append(Observation(kind="prefill", workload=key, measured=extra["ttft_ms_median"] / 1e3,
                                                 batch_size=1, prompt_len=float(prompt), output_len=1.0, **common))
        elif workload.get("mode") == "throughput" and done and duration:
            prompt = summary["input_throughput"] * duration / done  # the mean, as the bench counted tokens
            output = summary["output_throughput"] * duration / done
            if n == 1 and extra.get("decode_tokens_per_s"):
                runs.observations.append(Observation(kind="decode", workload=key, measured=extra["decode_tokens_per_s"],
                                                     batch_size=1, prompt_len=prompt, output_len=output, **common))
            elif n > 1:
                batch = min(n, (run.get("config") or {}).get("max_batch_size") or n)
                runs.observations.append(Observation(kind="throughput", workload=f"{key}, batch {batch}",
                                                     measured=summary["output_throughput"], batch_size=batch,
                                                     prompt_len=prompt, output_len=output, **common))
            else:
                runs.skipped["engine runs of other workloads"] += 1
        else:
            runs.skipped["engine runs of other workloads"] += 1


def _read_served(file: Path, data: dict, run: dict, profile: str, runs: Runs) -> None:
    """A closed-loop load through `opsctl serve` (opsctl bench --url): checked, never calibrated
    from (the server's own cost is in it), so the planner is seen against what a server gives."""
    workload, summary, load = run.get("workload") or {}, run.get("summary") or {}, run.get("load") or {}
    prompt, output = workload.get("input_len"), workload.get("output_len")
    fixed = all(isinstance(v, list) and len(v) == 2 and v[0] == v[1] for v in (prompt, output))
    if not (fixed and load.get("concurrency") and summary.get("output_throughput") and _sizeable(run.get("model"))):
        runs.skipped["server runs of a model that cannot be sized, or of mixed lengths"] += 1
        return
    c = int(load["concurrency"])
    runs.observations.append(Observation(
        kind="served", path=_shown(file), commit=str(data.get("git_commit") or "?")[:9], profile=profile,
        model=str(run["model"]), workload=f"opsctl serve under opsctl bench --url: prompt {prompt[0]}, "
                                          f"output {output[0]}, {c} streams",
        measured=float(summary["output_throughput"]), batch_size=c, prompt_len=float(prompt[0]),
        output_len=float(output[0])))


def _sizeable(model) -> bool:
    try:
        model_config(str(model))
    except (CalibrationError, PlanError, KeyError, ValueError):
        return False
    return True


def _read_http_vs_offline(file: Path, data: dict, profiles, runs: Runs) -> None:
    profile = _profile(data.get("device"), profiles)
    config = data.get("config") or {}
    # The engine without HTTP: the plain engine (all requests at once, max_batch_size = C) where
    # the file has it, else (older files) the offline closed loop of C streams: both run C at a time.
    engine = data.get("plain_engine") or data.get("offline") or {}
    if profile is None or not engine.get("output_tok_s") or not _sizeable(config.get("model")):
        runs.skipped["http_vs_offline without a profiled device, an engine figure or a model to size"] += 1
        return
    c, n = config["concurrency"], config["num_requests"]
    batch = min(c, config.get("max_batch_size") or c)
    key = (f"http_vs_offline, the engine without HTTP: {n} requests, prompt {config['input_len']}, "
           f"output {config['output_len']}, batch {batch}")
    common = dict(path=_shown(file), commit=str(data.get("git_commit") or "?")[:9], profile=profile,
                  model=str(config["model"]), batch_size=batch, prompt_len=float(config["input_len"]),
                  output_len=float(config["output_len"]))
    runs.observations.append(Observation(kind="throughput", workload=key, measured=float(engine["output_tok_s"]),
                                         **common))
    served = data.get("http") or {}
    if served.get("output_tok_s") and not served.get("num_errors"):
        runs.observations.append(Observation(
            kind="served", workload=key.replace("the engine without HTTP", "through HTTP"),
            measured=float(served["output_tok_s"]), **common))


def _profile(device_name: Any, profiles) -> str | None:
    if not isinstance(device_name, str) or not device_name:
        return None
    found = profile_for_gpu_name(device_name, profiles)
    return found.name if found is not None else None


def _span(value) -> str:
    if isinstance(value, list) and len(value) == 2:
        return str(value[0]) if value[0] == value[1] else f"{value[0]}-{value[1]}"
    return str(value)


def _first(value):
    return value[0] if isinstance(value, list) else value


def _shown(path: Path) -> str:
    """A path as sources name it: relative to the repository root where it lies inside it."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(REPO).as_posix()
    except ValueError:
        return resolved.as_posix()


# -- the model of a run ------------------------------------------------------------------------
_CONFIGS: dict[str, Any] = {}  # model name -> its config: a preset builds a transformers config, read it once


def model_config(model: str):
    """The HF config of a run's model: preset:NAME, or a local directory holding config.json."""
    if model not in _CONFIGS:
        if model.startswith("preset:"):
            from engine.models.presets import preset_config

            _CONFIGS[model] = preset_config(model.split(":", 1)[1])
        else:
            config_file = Path(model).expanduser() / "config.json"
            if not config_file.is_file():
                raise CalibrationError(f"cannot size the model {model!r} of a run: only preset:NAME and local "
                                       f"directories holding config.json are read")
            _CONFIGS[model] = json.loads(config_file.read_text(encoding="utf-8"))
    return _CONFIGS[model]


def _sized(model: str, quant: str = "bf16"):
    shape = ModelShape.from_config(model_config(model))
    return shape, count_params(shape), weight_bytes(shape, quant)


def predict(obs: Observation, profiles: dict[str, HardwareProfile], eff: Efficiency | None = None) -> float:
    """What the planner predicts for `obs` with the calibration in `profiles` (or `eff`)."""
    profile = profiles[obs.profile]
    eff = eff if eff is not None else efficiency(profile, profiles)
    shape, params, weights = _sized(obs.model)
    speed = dict(bandwidth_gbs=profile.bandwidth()[0], tflops=profile.tensor_tflops()[0], efficiency=eff)
    if obs.kind == "decode":
        return predict_decode(shape, params, weights, batch_size=1, context_len=obs.context_len, **speed).tokens_per_s
    if obs.kind == "prefill":
        return predict_prefill(shape, params, weights, prompt_len=round(obs.prompt_len), **speed).seconds
    return predict_throughput(shape, params, weights, batch_size=obs.batch_size, prompt_len=round(obs.prompt_len),
                              output_len=round(obs.output_len), **speed).output_tokens_per_s


def _decode_roofline(obs: Observation, profile: HardwareProfile) -> DecodePrediction:
    shape, params, weights = _sized(obs.model)
    return predict_decode(shape, params, weights, batch_size=1, context_len=obs.context_len,
                          bandwidth_gbs=profile.bandwidth()[0], tflops=profile.tensor_tflops()[0],
                          efficiency=Efficiency.roofline())


# -- deriving the figures ----------------------------------------------------------------------
def best_runs(observations: Iterable[Observation]) -> list[Observation]:
    """The fastest run of each workload on each card (see the module docstring)."""
    best: dict[tuple, Observation] = {}
    for obs in observations:
        if obs.group not in best or obs.better_than(best[obs.group]):
            best[obs.group] = obs
    return sorted(best.values(), key=lambda o: o.group)


def derive(runs: Runs, profiles: dict[str, HardwareProfile]) -> dict[str, Calibration]:
    """{profile name: its calibration} for every profile with runs (module docstring)."""
    chosen = best_runs(runs.observations)
    names = sorted({o.profile for o in chosen} | {m.profile for m in runs.memory})
    fields: dict[str, dict[str, Any]] = {name: {} for name in names}
    for name in names:
        readings = [m for m in runs.memory if m.profile == name]
        if readings:
            least = min(readings, key=lambda m: m.gib)
            fields[name]["usable_memory_gib"] = least.gib
            fields[name]["usable_memory_source"] = (
                f"torch's total memory of the card in {len(readings)} committed run{'s' * (len(readings) != 1)}, "
                f"the least {least.gib:g} GiB ({least.path}; datasheet {profiles[name].memory_gib:g})")
        profile = profiles[name]
        decode = [(o, o.measured / _decode_roofline(o, profile).tokens_per_s) for o in chosen
                  if o.profile == name and o.kind == "decode"]
        if decode:
            fields[name]["decode_bandwidth_efficiency"] = _mean(decode)
            bandwidth, where = profile.bandwidth()
            fields[name]["decode_source"] = _source(
                "batch-1 decode tok/s over the roofline at "
                f"{bandwidth:g} GB/s ({where})", decode,
                lambda o, e: f"{o.measured:.1f} tok/s at context {o.context_len:,.0f} = {e:.3f} of "
                             f"{_decode_roofline(o, profile).tokens_per_s:.1f}")
        prefill = [(o, _prefill_fraction(o, profile)) for o in chosen if o.profile == name and o.kind == "prefill"]
        if prefill:
            fields[name]["prefill_efficiency"] = _mean(prefill)
            tflops, where = profile.tensor_tflops()
            fields[name]["prefill_source"] = _source(
                f"prefill FLOPs / median TTFT over {tflops:g} TFLOP/s ({where})", prefill,
                lambda o, e: f"{o.prompt_len:,.0f} tokens in {o.measured * 1e3:.1f} ms = {e:.3f}")
    # GEMM figures need every card's decode figure first: a card without a batch-1 run takes the
    # default from the others, as the planner will.
    interim = calibrated(profiles, {n: Calibration(**f) for n, f in fields.items()})
    for name in names:
        profile = interim[name]
        fits = [(o, _fit_gemm(o, interim)) for o in chosen if o.profile == name and o.kind == "throughput"]
        if fits:
            fields[name]["gemm_efficiency"] = _mean(fits)
            tflops, where = profile.tensor_tflops()
            decode_origin = efficiency(profile, interim).origins["decode_bandwidth_efficiency"].split(":")[0]
            # "planner.predict_throughput" (now predictions', re-exported by the planner) stays as the
            # committed profiles' gemm_source spell it, so that --check and --write leave them unchanged.
            fields[name]["gemm_source"] = _source(
                f"the fraction of {tflops:g} TFLOP/s ({where}) at which planner.predict_throughput gives the "
                f"measured output tok/s (decode efficiency {decode_origin})", fits,
                lambda o, e: f"{o.measured:,.0f} tok/s at batch {o.batch_size}, prompt {o.prompt_len:,.0f}, "
                             f"output {o.output_len:,.0f} -> {e:.3f}")
    return {name: Calibration(**f) for name, f in fields.items() if f}


def calibrated(profiles: dict[str, HardwareProfile],
               calibrations: dict[str, Calibration]) -> dict[str, HardwareProfile]:
    """`profiles` with the calibration of each profile in `calibrations` replaced."""
    return {name: (p.model_copy(update={"calibration": calibrations[name]}) if name in calibrations else p)
            for name, p in profiles.items()}


def _prefill_fraction(obs: Observation, profile: HardwareProfile) -> float:
    shape, params, _ = _sized(obs.model)
    return prefill_flops(shape, params, obs.prompt_len) / obs.measured / (profile.tensor_tflops()[0] * 1e12)


def _fit_gemm(obs: Observation, profiles: dict[str, HardwareProfile]) -> float:
    """The gemm efficiency at which the predicted throughput equals the measured one (bisection:
    the prediction rises with it). Clamped to the range a Calibration accepts."""
    base = efficiency(profiles[obs.profile], profiles)
    low, high = _GEMM_BOUNDS
    for _ in range(60):
        mid = (low + high) / 2
        eff = Efficiency(base.decode_bandwidth, mid, base.prefill, base.origins)
        if predict(obs, profiles, eff) < obs.measured:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _mean(pairs) -> float:
    return round(sum(e for _, e in pairs) / len(pairs), DIGITS)


def _source(what: str, pairs, describe) -> str:
    runs = "; ".join(f"{o.path} ({o.workload}, {o.commit}): {describe(o, e)}" for o, e in pairs)
    many = f"the mean of {len(pairs)} workloads" if len(pairs) > 1 else "one workload"
    return f"{what}, {many}: {runs}"


# -- checking ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckRow:
    obs: Observation
    predicted: float  # with the calibration of every run
    left_out: float  # with the calibration of every other workload

    @property
    def error(self) -> float:
        return (self.predicted - self.obs.measured) / self.obs.measured

    @property
    def left_out_error(self) -> float:
        return (self.left_out - self.obs.measured) / self.obs.measured


def check(runs: Runs, profiles: dict[str, HardwareProfile]) -> list[CheckRow]:
    """Each workload's best run against the prediction in sample and with its workload left out."""
    # The cards with runs start from no calibration, so that a figure the committed YAML holds
    # (derived from the left-out workload too) cannot leak into a left-out prediction.
    names = {o.profile for o in runs.observations} | {m.profile for m in runs.memory}
    base = calibrated(profiles, {name: Calibration() for name in names})
    full = calibrated(base, derive(runs, base))
    rows = []
    for obs in best_runs(runs.observations):
        rest = Runs([o for o in runs.observations if o.group != obs.group], runs.memory, runs.skipped)
        rows.append(CheckRow(obs, predict(obs, full), predict(obs, calibrated(base, derive(rest, base)))))
    return rows


# -- writing profiles --------------------------------------------------------------------------
def render_block(calibration: Calibration, missing: list[str]) -> str:
    """The calibration block as YAML text, headed by HEADER and a line on the figures it lacks."""
    data = calibration.model_dump(exclude_none=True)
    lines = [HEADER]
    if missing:
        lines.append(f"# No committed run gives {', '.join(missing)}: the planner uses the default from the "
                     f"calibrated cards.")
    body = yaml.safe_dump({"calibration": data}, sort_keys=False, width=10**6, allow_unicode=True)
    return "\n".join(lines) + "\n" + body


def write_calibration(path: Path, block: str) -> None:
    """Replace (or add, before the top-level `source:`) the calibration block of one profile YAML."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == "calibration:"), None)
    if start is not None:
        end = start + 1
        while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
            end += 1
        while start > 0 and lines[start - 1].startswith("# ") and _ours(lines[start - 1]):
            start -= 1
    else:
        start = end = next((i for i, line in enumerate(lines) if line.startswith("source:")), len(lines))
    path.write_text("".join(lines[:start]) + block + "".join(lines[end:]), encoding="utf-8")


def _ours(line: str) -> bool:
    return line.startswith(HEADER) or line.startswith("# No committed run gives")


def stale(profiles: dict[str, HardwareProfile], calibrations: dict[str, Calibration]) -> list[str]:
    """Names of the profiles whose calibration block differs from `calibrations`."""
    return [name for name, c in calibrations.items() if profiles[name].calibration != c]


# -- output ------------------------------------------------------------------------------------
def describe(calibrations: dict[str, Calibration], profiles: dict[str, HardwareProfile],
             rows: list[CheckRow]) -> list[str]:
    """The figures, where each came from, and the check, as lines of text."""
    out = []
    merged = calibrated(profiles, calibrations)
    for name, c in calibrations.items():
        eff = efficiency(merged[name], merged)
        memory = f"{c.usable_memory_gib:g} GiB usable" if c.usable_memory_gib else "usable memory not recorded"
        out.append(f"{name}: {memory}; decode {eff.decode_bandwidth:.3f} of {merged[name].bandwidth()[0]:g} GB/s, "
                   f"GEMM {eff.gemm:.3f} and prefill {eff.prefill:.3f} of {merged[name].tensor_tflops()[0]:g} TFLOP/s")
        for figure, origin in eff.origins.items():
            out.append(f"  {figure}: {origin}")
    out.append("")
    out.append("Predicted against measured (error = predicted / measured - 1; left out = calibrated without "
               "that workload):")
    out.append(f"  {'card':<9} {'kind':<10} {'measured':>10} {'predicted':>10} {'error':>7} {'left out':>10} "
               f"{'error':>7}  run")
    for row in rows:
        o = row.obs
        unit = (lambda v: f"{v * 1e3:.1f} ms") if o.kind == "prefill" else (lambda v: f"{v:,.1f}")
        held = "" if o.kind == "prefill" or abs(row.left_out_error) <= GOAL else "  (beyond the goal)"
        out.append(f"  {o.profile:<9} {o.kind:<10} {unit(o.measured):>10} {unit(row.predicted):>10} "
                   f"{row.error:>+7.1%} {unit(row.left_out):>10} {row.left_out_error:>+7.1%}  {o.path} "
                   f"({o.workload}){held}")
    out.append(f"  goal: within {GOAL:.0%} for batch-1 decode and throughput, served or not (TTFT is shown, not "
               f"held to it); tok/s except prefill (TTFT); served rows calibrate nothing")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="result files or folders of them (e.g. reports/examples)")
    parser.add_argument("--write", action="store_true", help="rewrite the calibration block of each profile with runs")
    parser.add_argument("--check", action="store_true", help="exit 1 when a profile's block differs from the runs")
    parser.add_argument("--profiles-dir", help="the profiles folder (default: as the planner finds it)")
    args = parser.parse_args(argv)
    try:
        profiles = load_profiles(args.profiles_dir)
        runs = collect(args.paths, profiles)
        if not runs.observations and not runs.memory:
            raise CalibrationError(f"no engine runs on a profiled GPU under {', '.join(args.paths)}")
        calibrations = derive(runs, profiles)
        rows = check(runs, profiles)
    except (CalibrationError, ProfileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in describe(calibrations, profiles, rows):
        print(line)
    if runs.skipped:
        print("Not used: " + "; ".join(f"{n} {why}" for why, n in sorted(runs.skipped.items())))
    out_of_date = stale(profiles, calibrations)
    if args.write:
        root = profiles_dir(args.profiles_dir)
        for name, c in calibrations.items():
            missing = [f for f in ("decode_bandwidth_efficiency", "gemm_efficiency", "prefill_efficiency")
                       if getattr(c, f) is None]
            write_calibration(_profile_file(root, name), render_block(c, missing))
        load_profiles(args.profiles_dir)  # what was written must validate
        print(f"wrote the calibration of {', '.join(calibrations)} to {root}")
    elif out_of_date:
        print(f"the calibration in {', '.join(out_of_date)} differs from these runs: --write refreshes it")
    return 1 if args.check and out_of_date else 0


def _profile_file(root: Path, name: str) -> Path:
    for suffix in (".yaml", ".yml"):
        if (root / f"{name}{suffix}").is_file():
            return root / f"{name}{suffix}"
    raise CalibrationError(f"no profile file for {name} in {root}")


if __name__ == "__main__":
    sys.exit(main())
