"""GGUF file -> HF-style directory (model.safetensors, config.json, tokenizer, chat template).

transformers dequantizes a GGUF when it loads one (needs the `gguf` and `accelerate` packages), but
the model it returns is marked GGUF-quantized and refuses `save_pretrained`; so the state dict is
written with safetensors and config.json without `quantization_config`. The result loads with plain
`AutoModelForCausalLM.from_pretrained(out_dir)` and with our own weight loader. A file cut short or
not a GGUF at all is refused first, in one line (gguf_header); anything the reader still trips over
is a ModelLoadError naming the file.

`install_converted` does the conversion atomically into a cache directory (temp dir beside the
target, `.complete` marker written last, then a rename), so a crash never leaves a half model that
looks complete, nor, past the next conversion or pull, its temp dir (cache_temp). Also home of
`progress_step`, the one-line progress display of long model steps.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator
from unittest import mock

import torch

from ..errors import ModelLoadError, first_line
from .cache_temp import owned_temp_dir
from .gguf_header import check_gguf_file

COMPLETE_MARKER = ".complete"


@contextlib.contextmanager
def progress_step(what: str, *, enabled: bool = True) -> Iterator[None]:
    """Show `what` on stderr while the block runs (a spinner on a terminal), then its duration."""
    if not enabled:
        yield
        return
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    start = time.perf_counter()
    if console.is_terminal:
        with console.status(f"{what} ..."):
            yield
    else:
        # Not a terminal (CI logs, pytest): one line before, one after, no control characters.
        console.print(f"  {what} ...", soft_wrap=True)
        yield
    console.print(f"  {what}: done in {time.perf_counter() - start:.1f} s", soft_wrap=True)


def is_complete(model_dir: Path) -> bool:
    """True when `model_dir` was fully written by `install_converted` (or `materialize_preset`)."""
    return (model_dir / COMPLETE_MARKER).is_file() and (model_dir / "config.json").is_file()


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                 dtype: torch.dtype = torch.float32, progress: bool = True) -> Path:
    """Dequantize `gguf_path` into an HF directory `out_dir` (created if missing); returns it.

    Weights are stored in `dtype` (float32 by default: tests compare our fp32 outputs with
    transformers on exactly these weights). A tied `lm_head.weight` is not stored.
    """
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf_path}")
    check_gguf_file(gguf_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, model = _load_gguf(gguf_path, dtype, progress)
    with progress_step("writing safetensors, config and tokenizer", enabled=progress):
        _write_weights(model, out_dir / "model.safetensors", dtype)
        _write_config(model, out_dir / "config.json", dtype)
        tokenizer.save_pretrained(out_dir)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(out_dir)
    return out_dir


def install_converted(gguf_path: str | os.PathLike, target: str | os.PathLike, *,
                      dtype: torch.dtype = torch.float32, force: bool = False,
                      progress: bool = True) -> Path:
    """Convert `gguf_path` into `target` atomically, unless `target` is complete already."""
    target = Path(target)
    if is_complete(target) and not force:
        return target
    # The temp folder (removed on any way out; a killed run's is swept by the next: cache_temp) holds
    # the new model and, while it is swapped in, the old one.
    with owned_temp_dir(target.parent, f".tmp-{target.name}-") as tmp:
        new = tmp / "model"
        new.mkdir()
        convert_gguf(gguf_path, new, dtype=dtype, progress=progress)
        (new / COMPLETE_MARKER).write_text(f"converted from {Path(gguf_path).name}\n")
        make_readable(new, *new.rglob("*"))
        _replace_dir(new, target, tmp / "old")
    return target


def make_readable(*paths: Path) -> None:
    """Give `paths` the modes the umask allows (safetensors writes 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in paths:
        os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask)


def _replace_dir(new: Path, target: Path, aside: Path) -> None:
    """Rename `new` to `target`; an old `target` is moved to `aside` first and removed after."""
    old = None
    if target.exists():
        old = aside
        os.rename(target, old)
    try:
        os.rename(new, target)
    except OSError:
        # Another process installed it between our check and the rename: keep theirs.
        if is_complete(target):
            return
        if old is not None and not target.exists():
            os.rename(old, target)  # put the previous copy back rather than leave nothing
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _load_gguf(gguf_path: Path, dtype: torch.dtype, progress: bool):
    """Tokenizer and dequantized model from the GGUF, through transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    directory, name = str(gguf_path.parent), gguf_path.name
    # transformers' own tqdm bars would fight with our progress lines.
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with progress_step(f"reading the tokenizer from {name}", enabled=progress):
            tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        with progress_step(f"dequantizing the weights of {name}", enabled=progress), _quiet_gguf_bar():
            model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=dtype)
    except ImportError as e:
        raise ModelLoadError(f"reading GGUF needs the 'gguf' and 'accelerate' packages: {e}") from e
    except Exception as e:  # noqa: BLE001 - the reader raises struct.error, IndexError, ... for a bad file
        raise ModelLoadError(f"cannot read GGUF file {gguf_path}: {first_line(e)}: download it again, or pass "
                             f"another model file") from e
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
    return tokenizer, model


def _quiet_gguf_bar():
    """Silence the tqdm bar transformers draws while dequantizing (not covered by its logging switch)."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        return contextlib.nullcontext()
    if not hasattr(gguf_utils, "tqdm"):
        return contextlib.nullcontext()
    return mock.patch.object(gguf_utils, "tqdm", functools.partial(gguf_utils.tqdm, disable=True))


def _write_weights(model, path: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    tensors = {}
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # the loader ties it back to model.embed_tokens.weight
        # clone(): state_dict tensors may share storage, which save_file refuses.
        tensors[name] = tensor.detach().to(dtype).contiguous().clone()
    save_file(tensors, str(path), metadata={"format": "pt"})


def _write_config(model, path: Path, dtype: torch.dtype) -> None:
    """config.json as `save_pretrained` would write it, minus the GGUF quantization marker."""
    config = model.config
    config.architectures = [type(model).__name__]
    data = config.to_diff_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "torch_dtype"):
        data.pop(key, None)
    data["dtype"] = str(dtype).removeprefix("torch.")
    # GGUF stores float32: 1e-5 comes back as 9.999999747378752e-06; 7 digits is what it holds.
    if isinstance(data.get("rms_norm_eps"), float):
        data["rms_norm_eps"] = float(f"{data['rms_norm_eps']:.7g}")
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":  # python -m engine.models.gguf_convert FILE.gguf OUT_DIR
    if len(sys.argv) != 3:
        sys.exit("usage: python -m engine.models.gguf_convert FILE.gguf OUT_DIR")
    print(convert_gguf(sys.argv[1], sys.argv[2]))
