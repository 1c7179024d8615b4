"""Calibration text for AWQ, offline: what `--calib-dataset` accepts, and the held-out evaluation text.

`--calib-dataset` is one of
  builtin   the docstrings of the Python standard library that runs opsctl (module, class and function
            docstrings read with `ast`, never imported), files in sorted order: deterministic for a
            given Python version, no download;
  random    uniformly random token ids (seeded): a data-free calibration, mostly for tests;
  PATH      a user file: .txt (plain text) or .jsonl (per line an object with "text", or "messages"
            (a chat, rendered with the model's chat template), or "prompt" with an optional
            "completion"/"response"/"output").

The standard library's files are split once, by a hash of their path, into a calibration set (about
80 %) and a held-out set (about 20 %) that share no file: `heldout_text()` is what `opsctl eval ppl
--text builtin` measures, so perplexity is never judged on text the calibration has seen.

Everything here runs before any weight is read, so a bad dataset is reported at once (CalibDataError).
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import EngineError, first_line

BUILTIN = "builtin"
RANDOM = "random"
USER_SUFFIXES = (".txt", ".jsonl")
# Held-out share of the standard library's files: ~20 % keeps the calibration text above the
# 128 x 2048 tokens LMDeploy's defaults ask for (the whole corpus is ~1.8 MB of docstrings).
_HELDOUT_PERCENT = 20
# Folders of tests and third-party packages: test docstrings repeat one another and site-packages
# depends on what is installed, which would make "builtin" differ between machines.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_DOC_SEPARATOR = "\n\n"


class CalibDataError(EngineError, ValueError):
    """A calibration dataset that cannot be used; the message says what would be accepted."""


@dataclass(frozen=True)
class CalibSamples:
    """Token windows for calibration, and a sentence when they are fewer or shorter than asked."""

    input_ids: torch.Tensor  # int64 [n_samples, seqlen]
    note: str | None = None


def check_calib_dataset(spec: str) -> str:
    """Validate `--calib-dataset` without reading a large file: builtin, random, or a readable .txt/.jsonl."""
    text = str(spec).strip()
    if text in (BUILTIN, RANDOM):
        return text
    path = Path(text).expanduser()
    if path.suffix.lower() not in USER_SUFFIXES:
        if not path.exists():
            raise CalibDataError(f"unknown --calib-dataset {text!r}: use builtin, random, or the path of a "
                                 f".txt or .jsonl file")
        raise CalibDataError(f"--calib-dataset {text}: only .txt (plain text) and .jsonl (a \"text\", "
                             f"\"messages\" or \"prompt\" field per line) files are read")
    if not path.is_file():
        raise CalibDataError(f"--calib-dataset {text}: no such file")
    if not os.access(path, os.R_OK):
        raise CalibDataError(f"--calib-dataset {text}: the file is not readable")
    return str(path)


def calibration_text() -> str:
    """The builtin calibration text: the calibration share of the standard library's docstrings."""
    return _DOC_SEPARATOR.join(_builtin_documents(heldout=False))


def heldout_text() -> str:
    """The builtin evaluation text: docstrings of standard-library files the calibration never reads."""
    return _DOC_SEPARATOR.join(_builtin_documents(heldout=True))


def load_documents(spec: str, tokenizer=None) -> list[str]:
    """The documents of a builtin or user dataset (not `random`); CalibDataError when there are none.

    `tokenizer` renders .jsonl "messages" with its chat template (plain "role: content" lines without one).
    """
    spec = check_calib_dataset(spec)
    if spec == RANDOM:
        raise CalibDataError("the random dataset has no documents")
    if spec == BUILTIN:
        return list(_builtin_documents(heldout=False))
    path = Path(spec)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CalibDataError(f"cannot read --calib-dataset {path}: {first_line(e)}") from None
    if path.suffix.lower() == ".txt":
        docs = [raw] if raw.strip() else []
    else:
        docs = [_jsonl_document(line, number, path, tokenizer)
                for number, line in enumerate(raw.splitlines(), start=1) if line.strip()]
    if not docs:
        raise CalibDataError(f"--calib-dataset {path} holds no text")
    return docs


def calib_samples(spec: str, tokenizer, n_samples: int, seqlen: int, *, vocab_size: int,
                  seed: int = 0) -> CalibSamples:
    """`n_samples` windows of `seqlen` tokens from the dataset `spec` (see the module docstring).

    Texts are tokenized whole, without special tokens, and the windows are spread evenly over the
    token stream (not its start only: the builtin text is in file order, and its start would be
    the alphabetically first modules only). A text too short for n x seqlen gives fewer windows; one
    shorter than seqlen gives a single shorter window; `note` says so.
    """
    if n_samples <= 0 or seqlen <= 0:
        raise CalibDataError(f"--calib-samples and --calib-seqlen must be positive (got {n_samples} and {seqlen})")
    spec = check_calib_dataset(spec)
    if spec == RANDOM:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab_size, (n_samples, seqlen), generator=generator, dtype=torch.int64)
        return CalibSamples(ids)
    docs = load_documents(spec, tokenizer)
    stream = tokenizer(_DOC_SEPARATOR.join(docs), add_special_tokens=False, verbose=False)["input_ids"]
    if len(stream) < 2:
        raise CalibDataError(f"--calib-dataset {spec} gives fewer than 2 tokens")
    return _windows(torch.tensor(stream, dtype=torch.int64), n_samples, seqlen, spec)


def _windows(stream: torch.Tensor, n_samples: int, seqlen: int, name: str) -> CalibSamples:
    total = stream.numel()
    if total < seqlen:
        return CalibSamples(stream[None], f"the {name} text has {total} tokens only: one window of {total} "
                                          f"tokens instead of {n_samples} of {seqlen}")
    count = min(n_samples, total // seqlen)
    # Evenly spaced starts; count * seqlen <= total keeps them from overlapping.
    step = (total - seqlen) // (count - 1) if count > 1 else 0
    starts = [i * step for i in range(count)]
    ids = torch.stack([stream[s:s + seqlen] for s in starts])
    note = None
    if count < n_samples:
        note = (f"the {name} text has {total} tokens: {count} windows of {seqlen} tokens instead of "
                f"{n_samples}")
    return CalibSamples(ids, note)


def _jsonl_document(line: str, number: int, path: Path, tokenizer) -> str:
    where = f"--calib-dataset {path} line {number}"
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise CalibDataError(f"{where} is not JSON: {first_line(e)}") from None
    if not isinstance(item, dict):
        raise CalibDataError(f"{where} is a JSON {type(item).__name__}, not an object with a \"text\", "
                             f"\"messages\" or \"prompt\" field")
    if isinstance(item.get("text"), str):
        return item["text"]
    messages = item.get("messages")
    if isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            try:
                return tokenizer.apply_chat_template(messages, tokenize=False)
            except Exception as e:  # noqa: BLE001 - jinja raises many kinds for a bad chat
                raise CalibDataError(f"{where}: the chat template refuses these messages: {first_line(e)}") from None
        return "\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in messages)
    if isinstance(item.get("prompt"), str):
        answer = next((item[k] for k in ("completion", "response", "output") if isinstance(item.get(k), str)), "")
        return item["prompt"] + answer
    raise CalibDataError(f"{where} has no \"text\" string, \"messages\" list or \"prompt\" string")


def _builtin_documents(heldout: bool) -> tuple[str, ...]:
    return _builtin_split()[1 if heldout else 0]


@functools.lru_cache(maxsize=1)
def _builtin_split() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(calibration, held-out) documents: one per standard-library file, its docstrings in source order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    calibration, heldout = [], []
    for path in _stdlib_files(root):
        text = _docstrings(path)
        if text:
            (heldout if _is_heldout(path.relative_to(root).as_posix()) else calibration).append(text)
    if not calibration or not heldout:  # a Python without its sources (some embedded builds)
        raise CalibDataError(f"no standard-library sources under {root}: the builtin dataset needs them; "
                             f"pass a .txt or .jsonl file as --calib-dataset")
    # Two files with the very same docstrings would put one text on both sides: the held-out side keeps it.
    held = set(heldout)
    return tuple(d for d in calibration if d not in held), tuple(heldout)


def _stdlib_files(root: Path) -> list[Path]:
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIP_DIRS and not d.startswith("."))
        files.extend(Path(directory) / n for n in sorted(names) if n.endswith(".py"))
    return files


def _is_heldout(relative_path: str) -> bool:
    # A hash, not the alphabet: both shares then mix every part of the library.
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < _HELDOUT_PERCENT


def _docstrings(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return ""  # a file this Python cannot parse (lib2to3 fixtures...): it has no docstrings for us
    found = []

    def visit(node) -> None:  # depth first, in source order: a class's docstring before its methods'
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = (ast.get_docstring(node) or "").strip()
            if len(doc.split()) >= 2:  # drops the one-symbol docstrings of encoding tests ("π", "¶")
                found.append(doc)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return _DOC_SEPARATOR.join(found)
