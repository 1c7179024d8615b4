"""The files on both sides of `opsctl quantize`: the source's safetensors headers, and the AWQ output directory.

Output (what AutoAWQ's GEMM checkpoints look like, so third-party loaders read ours too):
  *.safetensors   per quantized linear NAME.qweight / NAME.qzeros / NAME.scales (engine/quant/int4_pack.py's
                  layout) plus NAME.bias when the layer has one (Qwen2's q/k/v); every other tensor
                  (embeddings, norms, an untied lm_head) as float16. With tied embeddings only the
                  embedding is written (AutoAWQ and transformers tie lm_head back on load).
                  One model.safetensors, or model-0000i-of-0000n.safetensors shards and
                  model.safetensors.index.json past `max_shard_bytes`.
  config.json     the source's own, with quantization_config {quant_method: awq, bits, group_size,
                  zero_point: true, version: gemm} and torch_dtype float16.
  tokenizer files, chat template and generation_config.json copied byte for byte.
The directory appears whole or not at all: it is written into a hidden sibling and renamed into place,
so a run that fails or is interrupted never leaves a half-written --work-dir that blocks the next run.

Checks that must come before any weight is read live here too: the --work-dir (`check_work_dir`) and
the source's safetensors headers (`read_safetensors_headers`: a truncated or garbled file is found
from its header and size alone).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch

from ..errors import EngineError, ModelLoadError, first_line

# Files a tokenizer or chat template may live in (HF names); copied when the source has them.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")
DEFAULT_SHARD_BYTES = 5 * 1024**3  # AutoAWQ's shard size
_HEADER_LIMIT = 100 * 1024**2  # safetensors' own cap on the JSON header
_SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                       "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class QuantizeError(EngineError, ValueError):
    """Input that `opsctl quantize` refuses (options, work dir, model); one line saying what to do."""


def quantization_config(bits: int, group_size: int) -> dict:
    """AutoAWQ's quantization_config for the GEMM layout (what vLLM, SGLang and LMDeploy look for)."""
    return {"quant_method": "awq", "bits": bits, "group_size": group_size, "zero_point": True, "version": "gemm"}


def check_work_dir(work_dir: str | os.PathLike) -> Path:
    """The output directory: new, or an empty directory, under a parent we can write in."""
    path = Path(work_dir).expanduser().absolute()
    if path.exists():
        if not path.is_dir():
            raise QuantizeError(f"--work-dir {path} is a file: pass a directory that does not exist yet")
        if any(path.iterdir()):
            raise QuantizeError(f"--work-dir {path} exists and is not empty: pass a new directory, or "
                                f"remove {path} first to quantize into it again")
    ancestor = path.parent
    while not ancestor.exists():  # the output's parents are made when it is written
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise QuantizeError(f"--work-dir {path}: cannot write in {ancestor}")
    return path


def read_safetensors_headers(directory: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (safetensors dtype, shape)} from every *.safetensors file's header; reads no weight.

    A file whose header does not parse, or that is shorter than its header says, is a ModelLoadError
    naming it (the source's own repair hint: pull again or re-download).
    """
    from ..models.source import repair_hint

    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors weights in {directory}")
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for path in files:
        try:
            header = _read_header(path)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"corrupt model file {path}: {first_line(e)}: {repair_hint(directory)}") from None
        tensors.update(header)
    return tensors


def _read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > min(_HEADER_LIMIT, size - 8):
            raise ValueError(f"its header claims {length} bytes")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"unreadable header ({first_line(e)})") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    out, end = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, stop) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError) as e:
            raise ValueError(f"tensor {name!r} has a malformed entry ({first_line(e)})") from None
        numel = 1
        for d in shape:
            numel *= d
        if dtype in _SAFETENSORS_DTYPES and stop - begin != numel * _SAFETENSORS_DTYPES[dtype]:
            raise ValueError(f"tensor {name!r}: {stop - begin} bytes for shape {list(shape)} in {dtype}")
        out[name] = (dtype, shape)
        end = max(end, stop)
    if 8 + length + end > size:
        raise ValueError(f"cut short: {size} bytes where its header needs {8 + length + end}")
    return out


def write_checkpoint(work_dir: str | os.PathLike, tensors: dict[str, torch.Tensor], source_dir: str | os.PathLike,
                     config: dict, *, bits: int, group_size: int,
                     max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write the AWQ directory (see the module docstring) atomically; returns its path.

    `tensors` maps checkpoint names to the tensors to store as they are (the caller casts); `config`
    is the source's config.json as a dict (not modified).
    """
    target = check_work_dir(work_dir)  # again: another process may have filled it while we calibrated
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        _write_shards(partial, tensors, max_shard_bytes)
        out_config = dict(config)
        out_config["quantization_config"] = quantization_config(bits, group_size)
        out_config["torch_dtype"] = "float16"
        if "dtype" in out_config:  # transformers 5 writes "dtype"; it wins over torch_dtype there
            out_config["dtype"] = "float16"
        (partial / "config.json").write_text(json.dumps(out_config, indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")
        for name in TOKENIZER_FILES:
            source = Path(source_dir) / name
            if source.is_file():
                shutil.copyfile(source, partial / name)
        _make_readable(partial)
        if target.exists():
            target.rmdir()  # empty (checked above); rename cannot replace a directory
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


def _write_shards(directory: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> None:
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):  # sorted: the same model always gives the same files
        tensor = tensors[name].contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(directory / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, start=1):
        file_name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / file_name), metadata={"format": "pt"})
        for name, tensor in shard.items():
            weight_map[name] = file_name
            total += tensor.numel() * tensor.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n",
                                                           encoding="utf-8")


def _make_readable(directory: Path) -> None:
    # mkdtemp makes 0700 and safetensors 0600: give the output the modes the umask allows, like any new file
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.iterdir():
        os.chmod(path, 0o666 & ~umask)


def dequantized_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """An AWQ GEMM directory back to float32 tensors under the usual names (NAME.weight for each
    quantized linear): what a perplexity check loads into transformers' unquantized model."""
    from safetensors.torch import load_file

    from .int4_pack import dequantize_awq

    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    group_size = int(config["quantization_config"]["group_size"])
    raw: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        raw.update(load_file(str(path)))
    out = {}
    for name, tensor in raw.items():
        if name.endswith(".qweight"):
            base = name[:-len(".qweight")]
            out[f"{base}.weight"] = dequantize_awq(tensor, raw[f"{base}.qzeros"], raw[f"{base}.scales"], group_size)
        elif not name.endswith((".qzeros", ".scales")):
            out[name] = tensor.float()
    return out
