"""`opsctl tune`: the serving settings that carry the most traffic within a latency goal on a card.

Trials run real `opsctl serve` processes under Locust load (`opsctl bench`); see toolkit/tune/ for
how. Output under reports/<run-id>/: tune.json and trials.csv (saved after every trial), report.html,
launch.sh (the exact `opsctl serve` command, with the closest lmdeploy and vllm lines) and deploy.yaml
(Kubernetes). Exit codes: 0 a configuration was chosen, 1 none met the SLO, 2 bad input, 130
interrupted (resume with --resume RUN-ID: finished trials are not re-run).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import engine_options as eo


def _bad_input(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@eo.with_engine_flags()
def tune(
    model: eo.ModelArg = None,
    *,
    gpu: Annotated[str, typer.Option("--gpu", help="The card to tune for: a profile name (opsctl profiles list), "
                                                   "NAMExN for N such cards (rtx4090x2: tp up to 2 is tried), or "
                                                   "auto (the local GPUs of GPU 0's kind; the cpu profile without "
                                                   "one).")] = "auto",
    workload: Annotated[str, typer.Option(help="chat, rag, code, batch or sharegpt:PATH (lengths and default SLO).")] = "chat",
    input_len: Annotated[Optional[int], typer.Option(help="Prompt tokens per request instead of the workload's.")] = None,
    output_len: Annotated[Optional[int], typer.Option(help="Output tokens per request instead of the workload's.")] = None,
    slo: Annotated[Optional[str], typer.Option(help="Override the workload's SLO: ttft_p99_ms=200,tpot_p99_ms=50 "
                                                    "(one percentile for both).")] = None,
    budget_minutes: Annotated[Optional[float], typer.Option(help="Stop starting trials after this many minutes.")] = None,
    max_trials: Annotated[Optional[int], typer.Option(help="Stop after this many trials (the default counts).")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue the tune reports/RUN-ID; finished trials are kept.")] = None,
    axis: Annotated[Optional[list[str]], typer.Option(
        help="Replace an axis's values: NAME=V1,V2 (tp, model_format: hf/int8/awq, quant_policy: 0/8, "
             "w4_kernel / w8_kernel: triton/cuda, max_batch_size, cache_max_entry_count, max_prefill_token_num, "
             "enable_prefix_caching); repeatable.")] = None,
    search: Annotated[str, typer.Option(help="coordinate (the tuner) or grid (every configuration, to check it).")] = "coordinate",
    max_streams: Annotated[Optional[int], typer.Option(help="Most concurrent streams a load search tries "
                                                           "(default 512 on a GPU, 16 on the CPU).")] = None,
    min_requests: Annotated[Optional[int], typer.Option(help="Fewest requests per load probe (default 64 on a GPU, "
                                                            "8 on the CPU; 3 per stream above that).")] = None,
    initial_streams: Annotated[Optional[int], typer.Option(help="Streams of each load search's first probe "
                                                               "(default 4 on a GPU, 1 on the CPU).")] = None,
    load_tolerance: Annotated[float, typer.Option(help="A load search stops when the passing and failing stream "
                                                       "counts are within this fraction (GuideLLM's 0.1).")] = 0.1,
    quality: Annotated[Optional[bool], typer.Option(
        "--quality/--no-quality", help="Measure the perplexity of every weight/KV format that ran (opsctl eval ppl "
                                      "on built-in held-out text; default: on a GPU, not on the CPU).")] = None,
    run_id: Annotated[Optional[str], typer.Option(help="Folder name under --output-dir (default: tune-<time>).")] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where the run's folder goes.")] = Path("reports"),
    engine_config=None,
) -> None:
    """Find the settings that serve the most traffic within the SLO on a card; report, launch.sh, deploy.yaml."""
    from toolkit.bench.metrics import LimitError
    from toolkit.planner import plan_tps
    from toolkit.profiles import ProfileError, resolve_gpu
    from toolkit.tune.runner import TuneError, TuneOptions, run_tune
    from toolkit.tune.space import parse_axis
    from toolkit.tune.workloads import apply_slo_override, resolve_workload

    console = Console(highlight=False)
    try:
        resolved = resolve_gpu(gpu)
        profile = resolved.profile
        if resolved.note:
            console.print(resolved.note)
        if profile.name != "cpu":  # the plan's rule and words: a tp needs that many cards (NAMExN)
            plan_tps(profile, [engine_config.tp])
        cpu = profile.name == "cpu" or engine_config.device == "cpu" or not _has_gpu()
        work, goal = resolve_workload(workload, cpu=cpu, input_len=input_len, output_len=output_len)
        goal = apply_slo_override(goal, slo)
        axes = dict(parse_axis(a) for a in axis or [])
        if search not in ("coordinate", "grid"):
            raise ValueError(f"--search {search!r}: coordinate or grid")
        for name, value in (("--max-trials", max_trials), ("--max-streams", max_streams),
                            ("--min-requests", min_requests), ("--initial-streams", initial_streams)):
            if value is not None and value < 1:
                raise ValueError(f"{name} {value}: must be >= 1")
        if not 0 < load_tolerance < 1:
            raise ValueError(f"--load-tolerance {load_tolerance:g}: must be in (0, 1)")
        if budget_minutes is not None and budget_minutes <= 0:
            raise ValueError(f"--budget-minutes {budget_minutes:g}: must be > 0")
        options = TuneOptions(model=model, profile=profile, workload=work, slo=goal, base=engine_config,
                              output_dir=output_dir, run_id=run_id, resume=resume, budget_minutes=budget_minutes,
                              max_trials=max_trials, axes=axes, search=search, max_streams=max_streams,
                              min_requests=min_requests, initial_streams=initial_streams,
                              load_tolerance=load_tolerance, quality=quality)
    except (ProfileError, LimitError, ValueError) as e:
        raise _bad_input(str(e)) from None
    try:
        result, out_dir = run_tune(options, console)
    except TuneError as e:
        raise _bad_input(str(e)) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: the servers are stopped; finished trials are saved "
                      f"(continue with --resume {options.resume or options.run_id or 'RUN-ID'})[/]")
        raise typer.Exit(130) from None
    _finish(result, out_dir, engine_config, profile, console)
    raise typer.Exit(0 if result.chosen else 1)


def _has_gpu() -> bool:
    from toolkit.profiles import detect_local_gpus

    return bool(detect_local_gpus()[0])


def _finish(result, out_dir: Path, base, profile, console: Console) -> None:
    """The outputs of a finished tune: launch files for the choice, the report, the summary lines."""
    from toolkit.tune.runner import launch_config

    console.print(result.why)
    config = launch_config(result, base)
    if config is not None:
        from toolkit.tune.launch import shell_line, serve_command, write_launch_files

        chosen = result.trial(result.chosen)
        weights = chosen.predicted.weights_gib if chosen.predicted else None
        # The pod asks for the cards the chosen tp splits the model over (memory_gib is one card's).
        write_launch_files(out_dir, result.model_spec, config,
                           profile_name=profile.spec, weights_gib=weights, memory_gib=profile.memory_gib,
                           gpus=0 if profile.name == "cpu" else config.tp)
        console.print("launch: " + shell_line(serve_command(
            result.model_spec, config)))
    from toolkit.tune.report import render_tune_report

    page = render_tune_report(result, out_dir)
    console.print(f"wrote {out_dir / 'tune.json'}, {out_dir / 'trials.csv'} and {page}")
