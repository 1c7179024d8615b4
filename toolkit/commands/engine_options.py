"""EngineConfig flags shared by every command that starts the engine (chat, serve, bench offline, tune).

The flags are made from EngineConfig's fields (engine/config.py: names, defaults, help and choices
are said there once); `@with_engine_flags()` adds them to a command's signature (typer reads
`__signature__`) and hands the command one validated EngineConfig as `engine_config`, so each command
lists only its own options. `EngineConfig.to_flags()` is the way back, from a config to these flags.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from typing import Annotated, Optional

import typer

from engine.config import EngineConfig, flag_names

ModelArg = Annotated[Optional[str], typer.Argument(
    help="Local HF directory, .gguf file, preset:NAME or a hub id found in the local Hugging Face cache; "
         "the embedded SmolLM2-135M-Instruct when left out.")]


def _python_type(f: dataclasses.Field):
    """The field's type for typer: `int | None` becomes Optional[int]."""
    hint = typing.get_type_hints(EngineConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return Optional[args[0]]
    return hint


def _annotation(f: dataclasses.Field):
    names = flag_names(f)
    if f.type in (bool, "bool") and f.default is True:  # on by default: the flag pair turns it off
        names = (f"{names[0]}/--no-{names[0][2:]}",)
    return Annotated[_python_type(f), typer.Option(*names, help=f.metadata.get("help", ""))]


def _parameter(f: dataclasses.Field) -> str:
    """The command parameter behind a field's flag (--engine-seed: engine_seed, clear of a command's --seed)."""
    return flag_names(f)[0][2:].replace("-", "_")


# (field name, parameter name, typer annotation, default) of every engine flag, in EngineConfig's order.
ENGINE_FLAGS = [(f.name, _parameter(f), _annotation(f), f.default) for f in dataclasses.fields(EngineConfig)]


def flag(name: str):
    """One engine flag's annotation, for a command that takes a single engine setting (plan)."""
    return {field: ann for field, _, ann, _ in ENGINE_FLAGS}[name]


def default(name: str):
    return {f.name: f.default for f in dataclasses.fields(EngineConfig)}[name]


def with_engine_flags(**defaults):
    """Decorate a command taking `engine_config`: it gains every engine flag (defaults overridable by
    field name, e.g. enable_prefix_caching=True for chat)."""
    def decorate(func):
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name != "engine_config"]
        flags = [inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, annotation=ann,
                                   default=defaults.get(field, default)) for field, param, ann, default in ENGINE_FLAGS]

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            values = {field: kwargs.pop(param) for field, param, _, _ in ENGINE_FLAGS}
            return func(*args, engine_config=engine_config(**values), **kwargs)

        wrapper.__signature__ = inspect.Signature(own + flags)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + flags}
        del wrapper.__wrapped__  # typer must see the new signature, not the wrapped one
        return wrapper
    return decorate


def engine_config(**values) -> EngineConfig:
    """A validated EngineConfig from flag values (fields left out keep EngineConfig's defaults)."""
    return EngineConfig(**values)
