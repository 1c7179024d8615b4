"""A whole tune: where it measures, what it tries, trials saved as they finish, the choice and outputs.

`run_tune(options)` is `opsctl tune` without the command line: it works out the device that measures
(the target card itself, a bigger GPU with the target's memory emulated, or the CPU, labelled as
such), builds the space, runs the search with every trial saved to tune.json and trials.csv as it
finishes, then writes launch.sh, deploy.yaml and report.html for the chosen configuration.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console

from engine.config import EngineConfig, default_max_batch_size
from toolkit.profiles import HardwareProfile, capped_memory, detect_local_gpus
from toolkit.report.schema import new_run_id
from toolkit.system_info import command_line, device_info, git_commit, versions

from .schema import Slo, Trial, TuneResult, TuneWorkload
from .search import NOISE, Budget, CoordinateSearch, GridSearch, objective
from .space import build_space, drop_default_batch, pin_auto_kernels, predict
from .live_server import LiveServer
from .quality import score_formats
from .trial import TrialSettings, run_trial

EMULATION_MARGIN = 1.05  # a device this much bigger than the target emulates it (caps memory)


class TuneError(Exception):
    """Bad input or an unusable resume; one line for the user."""


@dataclass
class TuneOptions:
    model: str | None
    profile: HardwareProfile
    workload: TuneWorkload
    slo: Slo
    base: EngineConfig
    output_dir: Path = Path("reports")
    run_id: str | None = None
    resume: str | None = None
    budget_minutes: float | None = None
    max_trials: int | None = None
    axes: dict[str, list] = field(default_factory=dict)
    search: str = "coordinate"
    max_streams: int | None = None
    min_requests: int | None = None
    initial_streams: int | None = None
    load_tolerance: float = 0.1
    quality: bool | None = None  # perplexity of each weight/KV format that ran (None: on a GPU, not on the CPU)


@dataclass
class Where:
    """The device that runs the trials and how it relates to the target card."""

    cpu: bool
    emulate_gib: float | None
    device: dict
    notes: list[str]
    default_batch: int  # what max_batch_size unset picks there (engine.config.default_max_batch_size)


def where_to_measure(profile: HardwareProfile, base: EngineConfig) -> Where:
    gpus, reason = detect_local_gpus()
    if base.device == "cpu" or not gpus or profile.name == "cpu":
        notes = []
        if profile.name != "cpu":
            notes.append(f"{profile.display_name} is not on this machine ({reason or 'the CPU was asked for'}): "
                         f"the plan and estimates are for {profile.display_name}; the trials measure on the CPU, "
                         f"labelled as such")
        return Where(cpu=True, emulate_gib=None, device=device_info(), notes=notes,
                     default_batch=default_max_batch_size(None))
    _, name, memory_gib = gpus[0]
    if memory_gib > profile.memory_gib * EMULATION_MARGIN:
        return Where(cpu=False, emulate_gib=float(profile.memory_gib), device=device_info(),
                     default_batch=default_max_batch_size(profile.memory_gib * 2**30), notes=[
            f"{profile.display_name} emulated on {name}: the engine may use {profile.memory_gib:g} GiB of its "
            f"{memory_gib:.0f} GiB, so what fits and what runs out of memory match the target card; speeds are "
            f"{name}'s, and the target card's are planner estimates"])
    if memory_gib < profile.memory_gib / EMULATION_MARGIN:
        raise TuneError(f"GPU 0 ({name}, {memory_gib:.0f} GiB) is smaller than {profile.display_name} "
                        f"({profile.memory_gib:g} GiB): it cannot stand in for it")
    return Where(cpu=False, emulate_gib=None, device=device_info(), notes=[],
                 default_batch=default_max_batch_size(memory_gib * 2**30))


def _model_config(model, base: EngineConfig) -> tuple[object | None, int, str]:
    """(the model's HF config, the session length its servers will serve, its kind: hf, awq or preset),
    as the engine works them out; (None, the configured length or 4096, "hf") when the model cannot be
    read: its trials say why."""
    from engine.models.source import resolve_model
    from engine.request_factory import session_len_for

    try:
        source = resolve_model(model)
    except Exception:  # noqa: BLE001 - the trials will say what is wrong with the model
        return None, base.session_len or 4096, "hf"
    qc = getattr(source.hf_config, "quantization_config", None)
    kind = "preset" if source.kind == "preset" else "awq" if qc else "hf"
    return source.hf_config, session_len_for(source, base.session_len), kind


def _axis_value(name: str, value) -> str:
    """One axis value as --axis takes it (model_format None is the checkpoint's own 16-bit weights: hf)."""
    if value is None:
        return "hf" if name == "model_format" else "default"
    return "on" if value is True else "off" if value is False else str(value)


LOCK_FILE = ".tune.lock"


@contextmanager
def run_lock(out_dir: Path):
    """Hold an exclusive lock on out_dir for a whole tune (or resume): a second `opsctl tune` on the same
    run id fails at once instead of racing the first one to tune.json and into its servers. flock is
    released by the kernel when the process ends, however it ends, so a killed tune leaves no stale
    lock (at most a file named LOCK_FILE that nobody holds)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise TuneError(f"another opsctl tune ({holder}) is running in {out_dir}: wait for it, or use "
                            "another --run-id") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            # Removed while still held: a tune that opened it meanwhile gets the lock on the removed file,
            # then finds tune.json under it and stops (the check after the lock), so none runs twice.
            path.unlink(missing_ok=True)


def auto_kernel(profile: HardwareProfile, cuda_unavailable: str | None) -> str:
    """What the engine's --w4-kernel / --w8-kernel auto would run on the target card, where the model can take the
    CUDA kernels (the space prunes them where it cannot): "cuda" on Hopper (engine/runner/weight_kernels.py) when
    this machine is a Hopper GPU that can build them (`cuda_unavailable` None: _w4_cuda_unavailable's answer),
    else "triton". An RTX 4090 tuned on an H200 gets Triton,
    what a 4090's default runs; the CUDA kernels are then the choice the search measures beside it."""
    import torch

    from engine.runner.weight_kernels import MEASURED_CAPABILITY

    hopper = "sm_{}{}".format(*MEASURED_CAPABILITY)
    cuda = (profile.arch == hopper and cuda_unavailable is None
            and torch.cuda.get_device_capability() == MEASURED_CAPABILITY)
    return "cuda" if cuda else "triton"


def _w4_cuda_unavailable() -> str | None:
    """Why the CUDA AWQ kernel cannot run on this machine's first GPU (None: it can; built on first use)."""
    import torch

    from engine.kernels.w4_mma import unavailable_reason

    return unavailable_reason(torch.device("cuda"))


def run_tune(options: TuneOptions, console: Console) -> tuple[TuneResult, Path]:
    where = where_to_measure(options.profile, options.base)
    hf_config, session_len, model_kind = _model_config(options.model, options.base)
    run_id = options.resume or options.run_id or new_run_id("tune")
    out_dir = Path(options.output_dir) / run_id
    if options.resume and not (out_dir / "tune.json").is_file():  # before the lock makes the folder
        raise TuneError(f"--resume {options.resume}: no {out_dir / 'tune.json'}")
    with run_lock(out_dir):
        return _run_locked(options, console, where, hf_config, session_len, model_kind, run_id, out_dir)


def _run_locked(options: TuneOptions, console: Console, where, hf_config, session_len: int, model_kind: str,
                run_id: str, out_dir: Path) -> tuple[TuneResult, Path]:
    weight_format = "float32" if where.cpu else "bf16"
    if options.resume:
        result = TuneResult.read(out_dir / "tune.json")
        console.print(f"resuming {options.resume}: {len(result.trials)} trial(s) done, none re-run")
    else:
        if (out_dir / "tune.json").exists():  # under the lock: a tune that held it may have just finished
            raise TuneError(f"{out_dir} holds a tune already: --resume {run_id}, or another --run-id")
        result = TuneResult(run_id=run_id, command=command_line(), git_commit=git_commit(),
                            model=options.model or "the embedded default model (SmolLM2-135M-Instruct)",
                            model_spec=options.model, target_profile=options.profile.spec,
                            measured_on=where.device, emulated=where.emulate_gib is not None, versions=versions(),
                            workload=options.workload, slo=options.slo, strategy=options.search,
                            notes=list(where.notes))
    cuda_unavailable = None if where.cpu else _w4_cuda_unavailable()
    space = build_space(hf_config, options.profile, result.workload, cpu=where.cpu, weight_format=weight_format,
                        session_len=session_len, block_size=options.base.cache_block_seq_len,
                        overrides=options.axes, usable_gib=where.emulate_gib, model_kind=model_kind,
                        local_gpus=None if where.cpu else len(detect_local_gpus()[0]),
                        w4_cuda_unavailable=cuda_unavailable)
    options.base = pin_auto_kernels(space, options.base,
                                    "triton" if where.cpu else auto_kernel(options.profile, cuda_unavailable))
    drop_default_batch(space, options.base, where.default_batch)
    searched = json.loads(json.dumps({"weight_format": weight_format, **space.axes}))  # as tune.json holds it
    if options.resume:
        _check_resume(result, options, searched)
    result.space = searched
    result.pruned = space.pruned
    for note in where.notes:
        console.print(f"[yellow]{note}[/]")
    console.print(f"tune {result.run_id}: {result.model} for {options.profile.display_name}, workload "
                  f"{result.workload.name} ({result.workload.input_len} prompt / {result.workload.output_len} output "
                  f"tokens), SLO {result.slo.words()}; {len(space.grid(options.base))} configurations in the "
                  "space (each axis's values and the default's own)")
    # The axes themselves: on a GPU the space has axes a CPU run never shows (weight and KV formats), and
    # the grid's size is their product, so a user sizing a grid sees what to pin with --axis.
    console.print("  axes: " + "; ".join(f"{name} {', '.join(_axis_value(name, v) for v in values)}"
                                         for name, values in space.grid_axes(options.base).items()))
    for p in space.pruned:
        console.print(f"  pruned {p.weight_format} {p.engine or ''}: {p.reason}")

    settings = TrialSettings(
        model=options.model, workload=result.workload, slo=result.slo, out_dir=out_dir, console=console,
        max_streams=options.max_streams or (16 if where.cpu else 512),
        min_requests=options.min_requests or (8 if where.cpu else 64),
        initial_streams=options.initial_streams or (1 if where.cpu else 4), tolerance=options.load_tolerance)

    # The card that measures, for the predictions beside each trial. Emulated: the local card's speeds
    # within the memory the engine was allowed (its cache holds what a 24 GiB card's would, and the
    # prediction must size it the same way).
    measuring = (options.profile if not where.emulate_gib
                 else capped_memory(_profile_of_local_gpu(options.profile), where.emulate_gib))

    def measure(trial: Trial) -> Trial:
        console.print(f"trial {trial.trial_id}: {' '.join(trial.flags) or '(defaults)'}")
        # Warm start: each configuration differs from the best so far in one setting, so its load
        # search starts where the best one's ended (a probe or two instead of doubling up from 4).
        incumbent = max((t for t in result.trials if t.best is not None), key=objective, default=None)
        settings.initial_streams = (incumbent.best.concurrency if incumbent is not None
                                    else options.initial_streams or (1 if where.cpu else 4))
        done = run_trial(trial, options.base.replace(**trial.engine, **fixed), settings, server)
        if done.status == "failed":
            console.print(f"  [red]failed[/]: {done.reason}")
        elif done.best is None:
            console.print(f"  no load meets the SLO ({done.stop_reason})")
        else:
            # The prediction for the card that measured (the target's own speeds are estimates
            # only when it was emulated: the report says so).
            config = options.base.replace(**done.engine)
            batch = min(done.best.concurrency, config.max_batch_size or where.default_batch)
            fmt = config.model_format or weight_format  # the planner's calibration covers 16-bit formats
            done.predicted = predict(hf_config, measuring, weight_format=fmt, batch=batch,
                                     workload=result.workload, cache_ratio=config.cache_max_entry_count,
                                     quant_policy=config.quant_policy, tp=config.tp)
            if where.emulate_gib:
                target = predict(hf_config, options.profile, weight_format=fmt, batch=batch,
                                 workload=result.workload, cache_ratio=config.cache_max_entry_count,
                                 quant_policy=config.quant_policy, tp=config.tp)
                done.predicted.target_output_tok_s = target.output_tok_s
            console.print(f"  best: {done.best.concurrency} streams, {done.best.output_tok_s:,.1f} tok/s within the "
                          f"SLO ({done.stop_reason}; set-up {done.setup_s:.1f} s)")
        return done

    def save() -> None:
        result.write(out_dir / "tune.json")
        _write_trials_csv(result, out_dir / "trials.csv")

    save()
    deadline = time.monotonic() + options.budget_minutes * 60 if options.budget_minutes else None
    fixed = {"gpu_memory_gb": where.emulate_gib} if where.emulate_gib else {}
    search_cls = GridSearch if options.search == "grid" else CoordinateSearch
    search = search_cls(space, options.base, result, measure, save, Budget(options.max_trials, deadline), fixed)
    server = LiveServer(options.model, out_dir, start_timeout_s=900.0)
    try:
        result.search = search.run_search()
    finally:
        server.stop()  # also on Ctrl-C: no server outlives its tune
    if options.quality if options.quality is not None else not where.cpu:
        result.quality = score_formats(result, options, fixed, console)
    result.why = explain_choice(result)
    save()
    return result, out_dir


def _check_resume(stored: TuneResult, options: TuneOptions, space: dict) -> None:
    """A resume continues the stored question or refuses: the options come from the command line again, and a
    different model, card, search or search space would mix two tunes' trials in one ranking (a grid meant
    as 24 configurations resumed without its --axis pins asks for 144)."""
    differ = []
    if (stored.model_spec or None) != (options.model or None):
        differ.append(f"model {options.model or 'the embedded default'} (stored: "
                      f"{stored.model_spec or 'the embedded default'})")
    if stored.target_profile != options.profile.spec:
        differ.append(f"--gpu {options.profile.spec} (stored: {stored.target_profile})")
    if stored.strategy and stored.strategy != options.search:  # a grid resumed as a search is neither
        differ.append(f"--search {options.search} (stored: {stored.strategy})")
    if stored.space and stored.space != space:
        changed = sorted(k for k in {*stored.space, *space} if stored.space.get(k) != space.get(k))
        differ.append("search space: " + ", ".join(f"{k} {space.get(k)} (stored: {stored.space.get(k)})"
                                                   for k in changed))
    if differ:
        raise TuneError(f"--resume {stored.run_id} with other options than the stored tune: {'; '.join(differ)}. "
                        f"Resume with the stored command's options: {stored.command}")


def _profile_of_local_gpu(fallback: HardwareProfile) -> HardwareProfile:
    """The profile of GPU 0 (the card that measured an emulated tune), else `fallback`."""
    from toolkit.profiles import ProfileError, resolve_gpu

    try:
        return resolve_gpu("auto").profile
    except ProfileError:
        return fallback


def explain_choice(result: TuneResult) -> str:
    chosen = result.trial(result.chosen) if result.chosen else None
    default = next((t for t in result.trials if t.is_default), None)
    if chosen is None:
        failed = sum(1 for t in result.trials if t.status == "failed")
        return (f"no configuration met the SLO ({result.slo.words()}) at any load: {failed} of "
                f"{len(result.trials)} failed to run; relax the SLO or use a bigger card")
    measured = sum(1 for t in result.trials if t.status == "ok")
    words = (f"{' '.join(chosen.flags) or 'the defaults'} carries {chosen.best.concurrency} streams at "
             f"{chosen.best.output_tok_s:,.1f} output tok/s with {chosen.best.slo_fraction:.0%} of requests within "
             f"{result.slo.words()}")
    runner_up = max((t for t in result.trials if t.status == "ok" and t is not chosen), key=objective, default=None)
    faster = runner_up if runner_up is not None and objective(runner_up) > objective(chosen) else None
    if faster is None:
        words += f", the most of the {measured} configurations measured"
    if default is chosen:
        words += "; it is the default configuration"
    if faster is not None:  # kept by the noise margin (search.NOISE): say what it was kept against
        words += (f"{',' if default is chosen else ';'} kept because none of the other {measured - 1} measured "
                  f"beat it by more than {NOISE:.0%} (the run-to-run spread of one configuration): the fastest, "
                  f"{' '.join(faster.flags) or 'the defaults'}, read {objective(faster):,.1f} tok/s "
                  f"({objective(faster) / objective(chosen):.2f}x)")
    if default is None or default is chosen:
        return words
    base = objective(default)
    if base > 0:
        return words + f"; {objective(chosen) / base:.2f}x the default configuration's {base:,.1f} tok/s"
    return words + ("; the default configuration failed: " + default.reason if default.status == "failed"
                    else "; the default configuration met the SLO at no load")


def _write_trials_csv(result: TuneResult, path: Path) -> None:
    rows = []
    for t in result.trials:
        for p in t.points or [None]:
            rows.append({"trial_id": t.trial_id, "status": t.status, "flags": " ".join(t.flags),
                         "is_default": t.is_default, "setup_s": t.setup_s, "reason": t.reason,
                         **(p.model_dump() if p is not None else {}),
                         "best": p is not None and t.best is not None and p.concurrency == t.best.concurrency})
    pd.DataFrame(rows).to_csv(path, index=False)


def launch_config(result: TuneResult, base: EngineConfig) -> EngineConfig | None:
    """The chosen configuration as the target card runs it (no emulation cap)."""
    chosen = result.trial(result.chosen) if result.chosen else None
    if chosen is None:
        return None
    return base.replace(**chosen.engine)

