"""`opsctl quantize awq` and `opsctl quantize rtn`: 4-bit weights in AutoAWQ's GEMM layout, offline.

A thin layer over engine.quant.awq (the checks, calibration and output live there). `awq` takes
LMDeploy's `lite auto_awq` flags with their defaults; `rtn` is plain round-to-nearest into the same
layout, the baseline AWQ must beat. Exit codes: 0 written, 2 bad input (one `error:` line, before
any weight is read), 130 interrupted (nothing is left in --work-dir).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Quantize a model's weights to 4 bits (AWQ or round-to-nearest) into an AutoAWQ "
                       "GEMM checkpoint that vLLM, SGLang, LMDeploy and opsctl load.",
                  no_args_is_help=True)

ModelArg = Annotated[Optional[str], typer.Argument(
    help="Local HF directory with safetensors, a .gguf file, or a hub id in the local Hugging Face cache; "
         "the embedded SmolLM2-135M-Instruct when left out.", show_default=False)]
WorkDir = Annotated[Optional[Path], typer.Option("--work-dir", help="Where the quantized model is written: a new or "
                                                                    "empty directory (required).", show_default=False)]
GroupSize = Annotated[Optional[int], typer.Option(
    "--w-group-size", show_default=False,
    help="Input channels per quantization group; it must divide every linear's input size. [default: 128, or "
         "the largest power of two below it that divides them: 64 for SmolLM2-135M, hidden size 576]")]
WBits = Annotated[int, typer.Option("--w-bits", help="Weight bits; 4 only (the AWQ GEMM layout).")]


@app.command()
def awq(
    model: ModelArg = None,
    *,
    work_dir: WorkDir = None,
    calib_dataset: Annotated[str, typer.Option(
        help="builtin (docstrings of Python's standard library, offline; `opsctl eval ppl --text builtin` "
             "measures on a disjoint part), random (random token ids), or a .txt / .jsonl file "
             "(\"text\", \"messages\" or \"prompt\" per line).")] = "builtin",
    calib_samples: Annotated[int, typer.Option(help="Calibration windows (fewer when the text is short).")] = 128,
    calib_seqlen: Annotated[int, typer.Option(help="Tokens per calibration window.")] = 2048,
    w_bits: WBits = 4,
    w_group_size: GroupSize = None,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass while calibrating (memory vs speed).")] = 1,
    search_scale: Annotated[bool, typer.Option(
        "--search-scale",
        help="Search AWQ's scales per layer group, scored on 4096 calibration tokens: 20 ratios a each of "
             "AutoAWQ's x^a / w^(1-a) and the AWQ paper's x^a, the best kept. Without it, LMDeploy's default: "
             "one fixed ratio 0.5 from the activations' absolute maximum, no search. The weight-clipping "
             "search runs either way.")] = False,
) -> None:
    """Activation-aware 4-bit weight quantization (AWQ) with offline calibration."""
    from engine.quant.awq import AwqOptions, quantize_awq

    options = AwqOptions(calib_dataset=calib_dataset, calib_samples=calib_samples, calib_seqlen=calib_seqlen,
                         w_bits=w_bits, w_group_size=w_group_size, batch_size=batch_size, search_scale=search_scale)
    result = _run(lambda: quantize_awq(model, work_dir, options), work_dir)
    typer.echo(f"AWQ {w_bits}-bit g{result.group_size} model written to {result.work_dir} ({result.layers} layers, "
               f"{result.samples} x {result.seqlen} calibration tokens, {result.seconds:.0f} s)")


@app.command()
def rtn(
    model: ModelArg = None,
    *,
    work_dir: WorkDir = None,
    w_bits: WBits = 4,
    w_group_size: GroupSize = None,
) -> None:
    """Round-to-nearest 4-bit weights in the same layout, no calibration (the baseline for AWQ)."""
    from engine.quant.awq import quantize_rtn

    result = _run(lambda: quantize_rtn(model, work_dir, w_bits=w_bits, w_group_size=w_group_size), work_dir)
    typer.echo(f"RTN {w_bits}-bit g{result.group_size} model written to {result.work_dir} ({result.layers} layers, "
               f"{result.seconds:.0f} s)")


def _run(job, work_dir):
    from engine.errors import EngineError

    if work_dir is None:  # checked here, not by typer, so that it too is one line
        typer.echo("error: give --work-dir OUT, the new directory the quantized model is written to", err=True)
        raise typer.Exit(2)
    try:
        return job()
    except EngineError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing was written", err=True)
        raise typer.Exit(130) from None
