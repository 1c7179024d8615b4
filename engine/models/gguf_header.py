"""Is a GGUF file whole? `check_gguf_file` walks its header before anything converts it.

transformers' GGUF reader assumes a well-formed file: one truncated inside its header dies with a
bare `struct.error`, one truncated inside its tensor data with a numpy reshape error halfway through
a long dequantization. This walk reads only the header (magic, version, metadata, tensor table; no
value is decoded but the alignment) and compares the end of the last tensor with the file's size,
so a broken file is one ModelLoadError naming it, in milliseconds, before any conversion starts.
Byte layout: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (little-endian only).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

from ..errors import ModelLoadError

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)  # v1 counted in 32 bits and predates every model in circulation
_STRING, _ARRAY = 8, 9
# Byte widths of the fixed-size metadata value types (uint8 .. float64, bool).
_WIDTH = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_ALIGNMENT_KEY = "general.alignment"
_DEFAULT_ALIGNMENT = 32
_FIX = "download it again, or pass another model file"


class _Broken(Exception):
    """What is wrong with the file, in a few words (becomes one ModelLoadError line)."""


def check_gguf_file(path: str | os.PathLike) -> None:
    """Raise ModelLoadError (one line naming `path` and what to do) unless the file is a whole GGUF."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            _check(f, os.fstat(f.fileno()).st_size)
    except OSError as e:
        raise ModelLoadError(f"cannot read GGUF file {path}: {e.strerror or e}") from None
    except _Broken as e:
        raise ModelLoadError(f"corrupt GGUF file {path}: {e}: {_FIX}") from None


class _Reader:
    """Sequential reads that refuse to run past the end of the file (and say where they stopped)."""

    def __init__(self, f, size: int):
        self.f, self.size, self.pos = f, size, 0

    def take(self, n: int, what: str) -> bytes:
        if n > self.size - self.pos:
            raise _Broken(f"truncated inside its header ({what} at byte {self.pos} runs past the end of the "
                          f"file, {self.size} bytes)")
        chunk = self.f.read(n)
        self.pos += n
        return chunk

    def skip(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            self.take(n, what)  # raises
        self.f.seek(n, os.SEEK_CUR)
        self.pos += n

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def string(self, what: str) -> bytes:
        return self.take(self.u64(f"the length of {what}"), what)

    def skip_string(self, what: str) -> None:
        self.skip(self.u64(f"the length of {what}"), what)


def _check(f, size: int) -> None:
    if size == 0:
        raise _Broken("the file is empty")
    r = _Reader(f, size)
    if r.take(min(4, size), "the magic bytes") != _MAGIC:
        raise _Broken("not a GGUF file (it does not start with the GGUF magic bytes)")
    version = r.u32("the version")
    if version not in _VERSIONS:
        raise _Broken(f"GGUF version {version} (opsctl reads versions {' and '.join(map(str, _VERSIONS))})")
    tensor_count = r.u64("the tensor count")
    metadata_count = r.u64("the metadata count")
    alignment = _DEFAULT_ALIGNMENT
    for i in range(metadata_count):
        key = r.string(f"metadata key {i}").decode("utf-8", "replace")
        value_type = r.u32(f"the type of metadata {key!r}")
        value = _skip_value(r, value_type, repr(key))
        if key == _ALIGNMENT_KEY and isinstance(value, int) and value > 0:
            alignment = value
    tensors = []
    for i in range(tensor_count):
        name = r.string(f"the name of tensor {i}").decode("utf-8", "replace")
        n_dims = r.u32(f"the rank of tensor {name!r}")
        dims = struct.unpack(f"<{n_dims}Q", r.take(8 * n_dims, f"the shape of tensor {name!r}"))
        ggml_type = r.u32(f"the type of tensor {name!r}")
        offset = r.u64(f"the offset of tensor {name!r}")
        tensors.append((name, dims, ggml_type, offset))
    data_start = -(-r.pos // alignment) * alignment
    needed, last = _data_end(tensors)
    if data_start + needed > size:
        raise _Broken(f"truncated inside its tensor data (tensor {last!r} ends at byte {data_start + needed}, "
                      f"the file has {size} bytes)")


def _skip_value(r: _Reader, value_type: int, what: str) -> int | None:
    """Step over one metadata value; return it when it is an integer (the alignment is one)."""
    if value_type in _WIDTH:
        raw = r.take(_WIDTH[value_type], f"the value of metadata {what}")
        return int.from_bytes(raw, "little") if value_type in (0, 2, 4, 10) else None
    if value_type == _STRING:
        r.skip_string(f"the value of metadata {what}")
        return None
    if value_type == _ARRAY:
        element_type = r.u32(f"the element type of metadata {what}")
        count = r.u64(f"the length of metadata {what}")
        if element_type in _WIDTH:
            r.skip(count * _WIDTH[element_type], f"the values of metadata {what}")
        elif element_type == _STRING:
            for _ in range(count):
                r.skip_string(f"a string of metadata {what}")
        else:
            raise _Broken(f"metadata {what} is an array of unknown type {element_type}")
        return None
    raise _Broken(f"metadata {what} has unknown value type {value_type}")


def _data_end(tensors) -> tuple[int, str]:
    """Bytes of tensor data the table promises (past the data start), and the tensor ending last.

    Tensor types the installed `gguf` package does not know are left out: transformers reports them.
    """
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    except ImportError:
        return 0, ""
    end, last = 0, ""
    for name, dims, ggml_type, offset in tensors:
        try:
            block_elements, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            continue
        elements = 1
        for d in dims:
            elements *= d
        tensor_end = offset + elements // block_elements * block_bytes
        if tensor_end > end:
            end, last = tensor_end, name
    return end, last
