"""What each weight / KV format a tune ran costs in quality: perplexity through the engine.

After the search (the live server stopped, so the device is free), every distinct (model_format,
quant_policy) among the trials that ran is scored by `opsctl eval ppl` in a subprocess, with the
tune's fixed settings (an emulated card's memory cap), on the first QUALITY_TOKENS tokens of the
built-in held-out text; the report shows each beside its best speed, as a ratio to the format the
checkpoint is stored in. A preset's random weights give a meaningless perplexity, but the ratio still
measures what rounding the weights or the KV cache changes.
"""
from __future__ import annotations

import json
import subprocess
import sys

from rich.console import Console

from engine.config import EngineConfig

QUALITY_TOKENS = 4096
QUALITY_WINDOW = 1024
QUALITY_TIMEOUT_S = 420


def format_key(engine: dict) -> tuple[str | None, int]:
    return engine.get("model_format"), engine.get("quant_policy", 0)


def format_words(model_format: str | None, quant_policy: int) -> str:
    weights = {None: "weights as stored", "int8": "int8 weights", "awq": "AWQ int4 weights"}.get(model_format, model_format)
    return f"{weights}, {'int8' if quant_policy == 8 else '16-bit'} KV cache"


def score_formats(result, options, fixed: dict, console: Console) -> list[dict]:
    """One perplexity per format that ran (the stored format first: the others' ratios are to it)."""
    stored = {"model_format": options.base.model_format, "quant_policy": options.base.quant_policy}
    keys = {format_key({**stored, **t.engine}) for t in result.trials if t.status == "ok"}
    base_key = format_key(stored)
    ordered = [base_key] + sorted((k for k in keys if k != base_key), key=lambda k: (str(k[0]), k[1]))
    rows, base_ppl = [], None
    for model_format, quant_policy in ordered:
        # eager: a scoring run is a few prefills, not worth capturing decode graphs for
        config = options.base.replace(model_format=model_format, quant_policy=quant_policy, eager_mode=True, **fixed)
        console.print(f"quality: perplexity with {format_words(model_format, quant_policy)} ...")
        row = {"model_format": model_format, "quant_policy": quant_policy,
               "words": format_words(model_format, quant_policy), **_perplexity(options.model, config)}
        if row.get("perplexity") is not None:
            if (model_format, quant_policy) == base_key:
                base_ppl = row["perplexity"]
            row["ratio_to_stored"] = row["perplexity"] / base_ppl if base_ppl else None
            console.print(f"  perplexity {row['perplexity']:.4f}" + (
                f" ({row['ratio_to_stored']:.4f}x the stored format's)" if row["ratio_to_stored"] else ""))
        else:
            console.print(f"  [red]not measured[/]: {row['error']}")
        rows.append(row)
    return rows


def _perplexity(model: str | None, config: EngineConfig) -> dict:
    argv = [sys.executable, "-m", "toolkit", "eval", "ppl", *([model] if model else []), *config.to_flags(),
            "--text", "builtin", "--max-tokens", str(QUALITY_TOKENS), "--window", str(QUALITY_WINDOW), "--json"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=QUALITY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"perplexity": None, "error": f"timed out after {QUALITY_TIMEOUT_S} s"}
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return {"perplexity": None, "error": lines[-1] if lines else f"exit code {done.returncode}"}
    data = json.loads(done.stdout[done.stdout.index("{"):])
    return {"perplexity": data["perplexity"], "tokens_scored": data["tokens_scored"], "seconds": data["seconds"],
            "error": None}
