"""`opsctl plan [MODEL] --gpu PROFILE|PROFILExN|auto`: what fits on a card (or N cards) and how fast it
can go, before any run.

Reads the model's config only (never its weights: a directory holding just config.json will do,
and a hub id needs only config.json in the Hugging Face cache) and prints, for each weight format,
the weight memory, KV bytes per token, KV tokens and sessions at each cache ratio on the card's
usable memory, decode tokens/s against batch size and prefill times, each predicted (the roofline
scaled by the card's calibrated efficiencies) beside the roofline, flags for what will not fit (no
speeds for it), and a closing recommendation with the `opsctl serve` line that runs it.
On a machine of N cards (`--gpu rtx4090x2`) each format is planned at every tensor-parallel size
the engine accepts up to N (or the one `--tp` asks for): memory per GPU, and a table of what the
collectives between the cards cost each step.
--json prints the plan itself (toolkit.planner.Plan) with the serve argv beside the recommendation.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..model_sizes import DEFAULT_RESERVE_GIB, QUANTS, PlanError
from ..planner import Plan, Recommendation, make_plan
from ..profiles import ProfileError, resolve_gpu
from . import engine_options as eo

BlockSeqLen = eo.flag("cache_block_seq_len")  # the engine flag itself: its name, type and help

GIB = 2**30


def plan(
    model: eo.ModelArg = None,
    *,
    gpu: Annotated[str, typer.Option("--gpu", help=(
        "Profile name (see `opsctl profiles list`); NAMExN for a machine of N such cards (rtx4090x2: two "
        "RTX 4090s); or auto: detect the local GPUs (those of GPU 0's kind counted)."))] = "auto",
    tp: Annotated[Optional[int], typer.Option("--tp", help=(
        "Plan this tensor-parallel size only (default: every tp the engine accepts for the model, up to the "
        "machine's cards)."))] = None,
    session_len: Annotated[int, typer.Option("--session-len", help="Tokens of one session (prompt + output).")] = 4096,
    batch_sizes: Annotated[str, typer.Option(
        "--batch-sizes", help="Decode batch sizes, comma-separated (256: the engine's default on >= 64 GiB cards).")
    ] = "1,8,32,128,256",
    cache_ratios: Annotated[str, typer.Option(
        "--cache-ratios", help="Cache ratios (LMDeploy's --cache-max-entry-count: fraction of the memory free after weights).")] = "0.5,0.8,0.9",
    quant: Annotated[str, typer.Option("--quant", help=f"Weight formats, comma-separated: {', '.join(QUANTS)}.")] = "bf16,int8,awq",
    context_len: Annotated[Optional[int], typer.Option(
        "--context-len", help="Context of each sequence in the decode estimates (default: half the session).")] = None,
    prompt_lens: Annotated[Optional[str], typer.Option(
        "--prompt-lens", help="Prompt lengths of the prefill estimates (default: 512, 2048 and the session length).")] = None,
    reserve_gib: Annotated[float, typer.Option(
        "--reserve-gib", help="Memory kept for the runtime (CUDA context, workspaces, activations), GiB.")] = DEFAULT_RESERVE_GIB,
    cache_block_seq_len: BlockSeqLen = eo.default("cache_block_seq_len"),
    quant_policy: Annotated[int, typer.Option(
        "--quant-policy", help="KV cache: 0 16-bit, 8 int8, 4 int4 (codes + fp32 scale and min per token and head).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Estimate weight memory, KV-cache capacity and roofline speed of MODEL on a GPU (no GPU needed)."""
    from engine.errors import EngineError

    try:
        resolved = resolve_gpu(gpu)
        config, name = _read_config(model)
        result = make_plan(config, resolved.profile, quants=_list(quant, str, "--quant"), session_len=session_len,
                           cache_ratios=_list(cache_ratios, float, "--cache-ratios"),
                           batch_sizes=_list(batch_sizes, int, "--batch-sizes"),
                           prompt_lens=_list(prompt_lens, int, "--prompt-lens") if prompt_lens else None,
                           context_len=context_len, reserve_gib=reserve_gib, block_size=cache_block_seq_len,
                           model_name=name, quant_policy=quant_policy, tps=[tp] if tp is not None else None)
    except (ProfileError, PlanError, EngineError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    if resolved.note:
        result.notes.insert(0, resolved.note)
    serve = serve_argv(result.recommendation, model) if result.recommendation else None
    if as_json:
        data = result.to_dict()
        if serve:
            data["recommendation"]["serve"] = serve
        print(json.dumps(data, indent=2))
    else:
        print_plan(result, _console(), serve)


def serve_argv(recommendation: Recommendation, model: str | None) -> list[str]:
    """The `opsctl serve` argv of a recommendation: its EngineConfig rendered by to_flags(), so the
    line parses back into the same config (the model as given to plan; none: the embedded one)."""
    from engine.config import EngineConfig

    return ["opsctl", "serve", *([model] if model else []), *EngineConfig(**recommendation.engine).to_flags()]


def _read_config(model: str | None):
    """(config, name) without reading weights: a config.json (or a directory holding one) is read
    as it is, so a plan needs no weights on disk; a hub id needs only its config.json in the HF cache
    (or fetches that file alone); anything else goes through resolve_model."""
    from engine.models.source import read_config_json  # the engine's reader: same errors everywhere

    if model is not None:
        path = Path(model).expanduser()
        config_file = path / "config.json" if path.is_dir() else path
        if config_file.suffix == ".json" and config_file.is_file():
            return read_config_json(config_file), (path.name if path.is_dir() else path.stem)
        from engine.models.hub import looks_like_hub_id, resolve_hub_model

        if looks_like_hub_id(model):
            return read_config_json(resolve_hub_model(model, need="config") / "config.json"), model
    from engine.models.source import resolve_model

    with Console(stderr=True).status("reading the model config"):
        source = resolve_model(model)
    return source.hf_config, source.name


def _list(text: str, kind, option: str) -> list:
    try:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of {kind.__name__}", param_hint=option) from None
    if not values:
        raise typer.BadParameter("give at least one value", param_hint=option)
    return values


def print_plan(result: Plan, console: Console, serve: list[str] | None = None) -> None:
    """The plan as three tables (memory, decode, prefill), flags and notes, then the recommendation."""
    p = result.params
    if result.memory_source == "measured":
        memory = (f"{result.memory_bytes / GIB:.1f} GiB usable (measured; {result.datasheet_memory_bytes / GIB:g} on "
                  f"the datasheet)")
    else:
        memory = f"{result.memory_bytes / GIB:.1f} GiB (datasheet: no committed run recorded what torch sees)"
    cards = f"{result.gpu_count} x " if result.gpu_count > 1 else ""
    per_card = " per card" if result.gpu_count > 1 else ""
    console.print(f"[bold]{result.model}[/bold] on [bold]{cards}{result.profile_display_name}[/bold] "
                  f"({result.profile_spec or result.profile}): {memory}, {result.bandwidth_gbs:g} GB/s "
                  f"({result.bandwidth_source}), {result.tensor_tflops:g} 16-bit TFLOP/s ({result.tensor_tflops_source})"
                  f"{per_card}")
    for line in _efficiency_lines(result):
        console.print(line)
    console.print(f"{p.total / 1e9:.2f} B parameters: embedding {p.embedding / 1e6:.0f} M, lm_head "
                  + ("tied" if p.lm_head_tied else f"{p.lm_head / 1e6:.0f} M") +
                  f", {p.num_layers} layers x {p.per_layer / 1e6:.1f} M; KV cache "
                  f"{result.quants[0].kv_bytes_per_token:,} bytes/token "
                  f"({ {0: '16-bit', 8: 'int8 + scales', 4: 'int4 + scales'}[result.quant_policy]}); reserve {result.reserve_bytes / GIB:.1f} GiB; "
                  f"session {result.session_len:,} tokens")
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(_memory_table(result))
    console.print(_decode_table(result))
    console.print(_prefill_table(result))
    if any(q.tp > 1 and q.fits for q in result.quants):
        console.print(_comm_table(result))
    for q in result.quants:
        for flag in q.flags:
            console.print(f"[bold red]{_label(result, q)}[/bold red]: {flag}")
        for note in q.notes:
            console.print(f"{_label(result, q)}: {note}")
    for tp, reason in dict.fromkeys((p.tp, p.reason) for p in result.tp_pruned):
        quants = [p.quant for p in result.tp_pruned if (p.tp, p.reason) == (tp, reason)]
        console.print(f"tp {tp} ({', '.join(quants)}) not planned: {reason}")
    console.print("Rules: " + "; ".join(f"{k} = {v}" for k, v in result.flag_rules.items()) + ".")
    rec = result.recommendation
    if rec is None:
        console.print(f"[bold]Recommendation[/bold]: none: {result.no_recommendation}.")
        return
    on_cards = f", tp {rec.tp}" if rec.tp > 1 else ""
    console.print(f"[bold]Recommendation[/bold]: {rec.quant}{on_cards}, cache ratio {rec.cache_ratio:g}, batch "
                  f"{rec.batch_size}: {rec.why}.")
    if serve:
        console.print("  " + shlex.join(serve), soft_wrap=True)


def _efficiency_lines(result: Plan) -> list[str]:
    """How the predictions were made: each efficiency, what it scales and where it came from."""
    e = result.efficiency
    if e.is_roofline:
        return ["Predictions = the roofline: no calibrated card of this kind (`python -m toolkit.calibrate` derives "
                "efficiencies from committed runs)."]
    lines = ["Predictions = roofline x efficiency (`python -m toolkit.calibrate` derives them from committed runs):"]
    parts = [("decode", e.decode_bandwidth, f"{result.bandwidth_gbs:g} GB/s", "decode_bandwidth_efficiency"),
             ("GEMM", e.gemm, f"{result.tensor_tflops:g} TFLOP/s", "gemm_efficiency"),
             ("prefill", e.prefill, f"{result.tensor_tflops:g} TFLOP/s", "prefill_efficiency")]
    for label, value, of, figure in parts:
        origin = e.origins[figure]
        if origin.startswith("calibrated"):  # the runs are long: the profile lists them
            origin = f"calibrated from this card's runs (`opsctl profiles show {result.profile}`)"
        lines.append(f"  {label} {value:.3f} of {of}: {origin}")
    return lines


def _label(result: Plan, q) -> str:
    """A row's name: the format, with its tp when the plan has more than one."""
    return q.quant if result.tps == [1] else f"{q.quant} tp{q.tp}"


def _memory_table(result: Plan) -> Table:
    per_gpu = ", weights and free memory per GPU" if result.gpu_count > 1 else ""
    table = Table(title=f"Memory (KV tokens and sessions of {result.session_len:,} at each cache ratio{per_gpu})",
                  title_justify="left")
    for column in ("format", "weights", "free after weights + reserve"):
        table.add_column(column, justify="right" if column != "format" else "left", no_wrap=True)
    for ratio in result.quants[0].kv:
        table.add_column(f"ratio {ratio.cache_ratio:g}", justify="right", no_wrap=True)
    table.add_column("flags")
    for q in result.quants:
        cells = [f"{kv.tokens:,} ({kv.sequences_in_blocks})" if q.fits else "-" for kv in q.kv]
        flags = ", ".join(f.split(":")[0] for f in q.flags) or "ok"
        table.add_row(_label(result, q), f"{q.weights.total / GIB:.2f} GiB", f"{q.free_bytes / GIB:.2f} GiB", *cells,
                      f"[red]{flags}[/red]" if q.flags else flags)
    return table


def _decode_table(result: Plan) -> Table:
    most = max(kv.cache_ratio for kv in result.quants[0].kv)
    table = Table(title=f"Decode tokens/s, predicted (roofline), context {result.context_len:,} tokens per sequence "
                        f"(! = the batch's KV needs more than ratio {most:g}; c = compute-bound)", title_justify="left")
    table.add_column("format")
    table.add_column("weights read/step" + (" per GPU" if result.gpu_count > 1 else ""), justify="right")
    for batch in result.batch_sizes:
        table.add_column(f"batch {batch}", justify="right", no_wrap=True)
    for q in result.quants:
        if not q.fits:  # no speed for what cannot run
            table.add_row(_label(result, q), f"{q.weights.decode / 1e9:.2f} GB", *("-" for _ in result.batch_sizes))
            continue
        cells = []
        for d, pred in zip(q.decode, q.predicted_decode):
            over = d.cache_ratio_needed is None or d.cache_ratio_needed > most
            cells.append(f"{pred.tokens_per_s:,.0f} ({d.tokens_per_s:,.0f}){'!' if over else ''}"
                         + (" c" if pred.bound == "compute" else ""))
        table.add_row(_label(result, q), f"{q.weights.decode / 1e9:.2f} GB", *cells)
    return table


def _prefill_table(result: Plan) -> Table:
    table = Table(title="Prefill time of one prompt on an idle engine (TTFT), predicted (roofline)",
                  title_justify="left")
    table.add_column("format")
    for prompt in result.prompt_lens:
        table.add_column(f"{prompt:,} tokens", justify="right", no_wrap=True)
    for q in result.quants:
        if not q.fits:
            table.add_row(_label(result, q), *("-" for _ in result.prompt_lens))
            continue
        table.add_row(_label(result, q), *(f"{_seconds(pred.seconds)} ({_seconds(e.seconds)})"
                                           for e, pred in zip(q.prefill, q.predicted_prefill)))
    return table


def _comm_table(result: Plan) -> Table:
    """What tensor parallelism's collectives cost: per row at tp > 1, their time in a decode step and a
    prefill, and their share of the predicted time."""
    layers = result.shape.num_layers
    table = Table(title=(f"Tensor-parallel collectives per forward, ms (share of the predicted time): {2 * layers + 1} "
                         f"all-reduces of tokens x {result.shape.hidden_size:,} x 2 bytes (2 per layer + the "
                         f"embedding's), the logits gathered on rank 0, the sampled ids broadcast"),
                  title_justify="left")
    table.add_column("format")
    table.add_column("link (per direction, latency)")
    for batch in result.batch_sizes:
        table.add_column(f"decode b{batch}", justify="right", no_wrap=True)
    for prompt in result.prompt_lens:
        table.add_column(f"prefill {prompt:,}", justify="right", no_wrap=True)
    for q in result.quants:
        if q.tp == 1 or not q.fits:
            continue
        link = f"{q.link.kind} {q.link.gbs:.3g} GB/s, {q.link.latency_us:g} us"
        decode = [f"{p.comm_ms:.2f} ({p.comm_ms / p.step_ms:.0%})" for p in q.predicted_decode]
        prefill = [f"{p.comm_ms:.2f} ({p.comm_ms / (p.seconds * 1e3):.0%})" for p in q.predicted_prefill]
        table.add_row(_label(result, q), link, *decode, *prefill)
    return table


def _seconds(value: float) -> str:
    return f"{value * 1e3:,.1f} ms" if value < 1 else f"{value:,.2f} s"


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)  # piped: do not fold the tables at 80 columns
    return console

