"""Resolve what the user typed as a model into a ModelSource: config, tokenizer and weights path.

Accepted, in this order:
  None (or "default", or "SmolLM2-135M-Instruct" when no such path exists)
                      -> the embedded default model, pulled into the cache on first use;
  "preset:NAME"       -> a real architecture with random weights (presets.py);
  a "*.gguf" file     -> converted once into the cache (keyed by file name, size and mtime);
  a directory with config.json and *.safetensors -> used as it is (HF layout, sharded or not);
  "Owner/Name", a hub id that is not a local path -> its snapshot in the Hugging Face cache,
                      downloaded into it first where a hub is reachable (hub.py).
Anything else is a ModelLoadError with one line saying what would have been accepted. Weights are
not read here: the loader does that (and reports corrupt safetensors). A broken file (config.json,
tokenizer, a GGUF cut short: gguf_header) is a ModelLoadError naming it and what to do
(`repair_hint`); `read_config_json` is the one reader of config.json, for the engine and the toolkit.

The model cache is $OPSCTL_CACHE_DIR, else ~/.cache/opsctl; models live under <cache>/models/.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError, first_line

CACHE_ENV = "OPSCTL_CACHE_DIR"
PRESET_PREFIX = "preset:"
_DEFAULT_ALIASES = ("default", "SmolLM2-135M-Instruct")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def model_cache_dir() -> Path:
    """The opsctl cache root: $OPSCTL_CACHE_DIR if set, else ~/.cache/opsctl."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "opsctl"


def models_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """<cache>/models: converted and downloaded models (cache_dir overrides the cache root)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else model_cache_dir()
    return root / "models"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's pieces are. kind is "hf" (a local HF-style directory) or "preset"."""

    kind: str
    name: str  # the served model name: dir basename, "SmolLM2-135M-Instruct", "preset:qwen2.5-7b"
    hf_config: Any = field(repr=False, compare=False)  # transformers.PretrainedConfig
    tokenizer_path: str  # a directory AutoTokenizer.from_pretrained reads
    weights_path: str | None  # HF directory holding *.safetensors; None for presets (random)

    def load_tokenizer(self):
        """The transformers tokenizer (carries the chat template)."""
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.tokenizer_path)
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds; all mean "unreadable"
            raise ModelLoadError(f"cannot read the tokenizer in {self.tokenizer_path}: {first_line(e)}: "
                                 f"{repair_hint(self.tokenizer_path)}") from e


def resolve_model(spec: str | os.PathLike | None, *,
                  cache_dir: str | os.PathLike | None = None) -> ModelSource:
    """Turn a model spec into a ModelSource (see the module docstring for what is accepted)."""
    if spec is None:
        return _default_source(cache_dir)
    text = str(spec).strip()
    if text.startswith(PRESET_PREFIX):
        return _preset_source(text[len(PRESET_PREFIX):])
    path = Path(text).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _gguf_source(path, cache_dir)
    if path.is_dir() and (path / "config.json").is_file():
        return hf_dir_source(path)
    if text in _DEFAULT_ALIASES and not path.exists():
        return _default_source(cache_dir)
    if path.suffix.lower() == ".gguf" and not path.exists():
        raise ModelLoadError(f"model not found: no GGUF file at {text!r}")
    from .hub import looks_like_hub_id, resolve_hub_model

    if looks_like_hub_id(text):
        return hf_dir_source(resolve_hub_model(text), name=text)
    from .presets import list_presets

    presets = ", ".join(list_presets())
    if path.is_dir():
        raise ModelLoadError(
            f"model not found: {text!r} is a directory without config.json (expected an HF model "
            f"directory, a .gguf file, or preset:NAME; presets: {presets})")
    raise ModelLoadError(
        f"model not found: {text!r} is neither a local directory with config.json, a .gguf file, "
        f"preset:NAME (presets: {presets}), nor a Hugging Face hub id such as Qwen/Qwen2.5-7B-Instruct")


def hf_dir_source(directory: str | os.PathLike, *, name: str | None = None) -> ModelSource:
    """A ModelSource for a local HF directory, after checking its config, weights and tokenizer."""
    directory = Path(directory).resolve()
    config = _read_config(directory)
    _check_weights(directory)
    _check_tokenizer(directory)
    return ModelSource(kind="hf", name=name or directory.name, hf_config=config,
                       tokenizer_path=str(directory), weights_path=str(directory))


def gguf_cache_dir(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `gguf_path` is converted to: keyed by its name, size and mtime (a changed file reconverts)."""
    path = Path(gguf_path).resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return models_dir(cache_dir) / "gguf" / f"{path.stem}-{key}"


def _default_source(cache_dir) -> ModelSource:
    from .default_model import DEFAULT_MODEL_NAME, pull_default_model

    return hf_dir_source(pull_default_model(cache_dir=cache_dir), name=DEFAULT_MODEL_NAME)


def _preset_source(preset: str) -> ModelSource:
    from .presets import TOKENIZER_DIR, preset_config

    return ModelSource(kind="preset", name=f"{PRESET_PREFIX}{preset}",
                       hf_config=preset_config(preset), tokenizer_path=str(TOKENIZER_DIR),
                       weights_path=None)


def _gguf_source(path: Path, cache_dir) -> ModelSource:
    from . import gguf_convert
    from .gguf_header import check_gguf_file

    target = gguf_cache_dir(path, cache_dir)
    if not gguf_convert.is_complete(target):
        # A broken file is refused before the "converting" line: its error is then the only output.
        check_gguf_file(path)
        print(f"opsctl: converting {path.name} into {target} (one time)", file=sys.stderr, flush=True)
        gguf_convert.install_converted(path, target)
    return hf_dir_source(target, name=path.stem)


def read_config_json(config_file: str | os.PathLike) -> dict:
    """A model's config.json as a dict; ModelLoadError naming the file when it is not a JSON object.

    Every reader of a model's config goes through here (the engine via resolve_model, `opsctl plan`,
    `opsctl models list`), so a broken file reads the same wherever it is met.
    """
    config_file = Path(config_file)
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"corrupt {config_file}: {first_line(e)}: {repair_hint(config_file.parent)}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"corrupt {config_file}: it holds a JSON {type(data).__name__}, not an object: "
                             f"{repair_hint(config_file.parent)}")
    return data


def repair_hint(directory: str | os.PathLike) -> str:
    """What to do about a broken file in a model directory (ends the one-line error)."""
    from .default_model import DEFAULT_MODEL_NAME
    from .gguf_convert import COMPLETE_MARKER

    directory = Path(directory)
    if (directory / COMPLETE_MARKER).is_file():  # written by opsctl: a pulled or converted copy in the cache
        if directory.name == DEFAULT_MODEL_NAME:
            return "run `opsctl models pull --force` to fetch it again"
        return f"delete {directory} (a converted copy) and run again to convert it anew"
    return "download the model again, or pass another model"


def _read_config(directory: Path):
    from transformers import AutoConfig

    config_file = directory / "config.json"
    read_config_json(config_file)
    try:
        return AutoConfig.from_pretrained(str(directory))
    except Exception as e:  # noqa: BLE001 - unknown model_type, bad field values, ...
        raise ModelLoadError(f"cannot read {config_file}: {first_line(e)}: fix that file, or pass another "
                             f"model") from e


def _check_weights(directory: Path) -> None:
    index_file = directory / "model.safetensors.index.json"
    if index_file.is_file():
        try:
            shards = set(json.loads(index_file.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
            raise ModelLoadError(f"corrupt {index_file}: {first_line(e)}: {repair_hint(directory)}") from e
        missing = sorted(s for s in shards if not (directory / s).is_file())
        if missing:
            raise ModelLoadError(f"{directory} lacks safetensors shards listed in {index_file.name}: "
                                 f"{', '.join(missing)}")
        return
    if any(directory.glob("*.safetensors")):
        return
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")) or any(directory.glob("*.pth")):
        raise ModelLoadError(
            f"{directory} holds PyTorch .bin/.pt weights only; opsctl reads safetensors: convert them "
            f"(transformers: model.save_pretrained(dir, safe_serialization=True)) or download the "
            f"*.safetensors files")
    raise ModelLoadError(f"no *.safetensors weights in {directory}")


def _check_tokenizer(directory: Path) -> None:
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"no tokenizer in {directory}: expected one of {', '.join(TOKENIZER_FILES)}")
    # Cheap early check of the JSON files (a 7 MB tokenizer.json parses in ~50 ms); anything
    # subtler surfaces in ModelSource.load_tokenizer, also as a ModelLoadError naming the directory.
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = directory / name
        if path.is_file():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ModelLoadError(f"corrupt {path}: {first_line(e)}: {repair_hint(directory)}") from e
