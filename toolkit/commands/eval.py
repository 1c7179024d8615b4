"""`opsctl eval ppl [MODEL] --text FILE|builtin`: perplexity through the engine (toolkit/perplexity.py).

Every engine flag applies, so `--model-format int8`, an AWQ checkpoint or `--quant-policy 8` is scored
on the path that serves it; `--json` prints the result, `--out` writes it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import engine_options as eo

app = typer.Typer(help="Measure a model's quality through the engine.", no_args_is_help=True)


@app.command("ppl")
@eo.with_engine_flags()
def ppl(
    model: eo.ModelArg = None,
    *,
    text: Annotated[str, typer.Option(
        "--text", help="A UTF-8 text file, or builtin: held-out text shipped with Python, never used for calibration.")
    ] = "builtin",
    window: Annotated[int, typer.Option(help="Tokens per scored window (non-overlapping).")] = 1024,
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", help="Score only the first N tokens of the text (default: all of it).")] = 32768,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Also write the result as JSON here.")] = None,
    engine_config=None,
) -> None:
    """Perplexity of MODEL on a text, through the engine as configured by the engine flags."""
    from engine.engine import LLMEngine

    from ..perplexity import load_text, perplexity

    try:
        body = load_text(text)
        if window < 2 or (max_tokens is not None and max_tokens < 2):
            raise ValueError("--window and --max-tokens must be at least 2")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    engine = LLMEngine(model, engine_config)
    result = perplexity(engine, body, window=window, max_tokens=max_tokens, text_name=text,
                        model_name=engine.source.name)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        fmt = engine_config.model_format or "as stored"
        print(f"{engine.source.name} ({fmt} weights, KV quant_policy {engine_config.quant_policy}): perplexity "
              f"{result.perplexity:.4f} over {result.tokens_scored:,} tokens of {text} "
              f"({result.windows} windows of {result.window}; {result.seconds:.1f} s)")
