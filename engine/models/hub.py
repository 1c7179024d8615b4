"""Models named by Hugging Face hub id (`Qwen/Qwen2.5-7B-Instruct`): the local HF cache first, then the hub.

`looks_like_hub_id` tells a hub id from a path; `find_in_hf_cache` finds the snapshot directory that
huggingface_hub's cache holds for a revision (models--Owner--Name/refs/<revision> ->
snapshots/<commit>/); `resolve_hub_model` returns a local directory holding what the caller needs
("config": config.json only, for `opsctl plan`; "all": config, tokenizer and safetensors weights),
downloading the missing files with `huggingface_hub.snapshot_download` when HF_HUB_OFFLINE is not set.
Every failure is one ModelLoadError line naming the repo id and the cache directory looked in.

The cache directory follows huggingface_hub's variables (HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE,
else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub), read when
called rather than when huggingface_hub was imported. The hub is asked once, with a short timeout
(HF_HUB_ETAG_TIMEOUT, else 5 s), before any download: huggingface_hub's own first request has none,
so a network that drops packets would otherwise hang start-up.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import ModelLoadError, first_line
from .source import TOKENIZER_FILES

NEEDS = ("all", "config")
DEFAULT_PROBE_TIMEOUT_S = 5.0
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub.constants.ENV_VARS_TRUE_VALUES
# What the engine reads from a model repo: top-level configs, tokenizer files and safetensors weights
# (never .bin/.pt/.gguf copies of the same weights, nor subfolders such as original/ or onnx/).
_ALL_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja", "*.tiktoken"]
_CONFIG_PATTERNS = ["config.json"]
_SUBFOLDERS = ["*/*"]


def looks_like_hub_id(spec: str | os.PathLike) -> bool:
    """True for `owner/name` that is a valid hub repo id and not an existing local path."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    text = str(spec).strip()
    if text.count("/") != 1 or Path(text).expanduser().exists():
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def hf_hub_cache() -> Path:
    """The HF hub cache directory, by huggingface_hub's rules (module docstring), as of now."""
    configured = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not configured:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
        configured = os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(configured)))


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to a true value, as huggingface_hub reads it."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in _TRUE


def find_in_hf_cache(repo_id: str, *, revision: str = "main",
                     cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cached snapshot directory of `repo_id` at `revision` (a branch, tag or commit) that holds a
    config.json, or None. huggingface_hub resolves refs/<revision> to the commit's snapshot."""
    from huggingface_hub import try_to_load_from_cache

    cache = Path(cache_dir) if cache_dir is not None else hf_hub_cache()
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(cache), revision=revision)
    return Path(found).parent if isinstance(found, str) else None


def resolve_hub_model(repo_id: str, *, need: str = "all", revision: str = "main",
                      cache_dir: str | os.PathLike | None = None) -> Path:
    """A local directory with what `need` asks of `repo_id`: from the HF cache, else downloaded into it."""
    if need not in NEEDS:
        raise ValueError(f"need must be one of {NEEDS}, got {need!r}")
    cache = Path(cache_dir) if cache_dir is not None else hf_hub_cache()
    snapshot = find_in_hf_cache(repo_id, revision=revision, cache_dir=cache)
    if snapshot is not None and (need == "config" or _has_weights_and_tokenizer(snapshot)):
        return snapshot
    where = (f"{repo_id!r} is not in the Hugging Face cache {cache}" if snapshot is None else
             f"{repo_id!r} is in the Hugging Face cache {cache} without its safetensors weights or tokenizer")
    if hub_offline():
        raise ModelLoadError(_offline_message(where))
    return _download(repo_id, revision=revision, need=need, cache=cache, where=where)


def _download(repo_id: str, *, revision: str, need: str, cache: Path, where: str) -> Path:
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    timeout = _probe_timeout()
    endpoint = constants.ENDPOINT
    try:
        HfApi().model_info(repo_id, revision=revision, timeout=timeout)
    except GatedRepoError:
        raise ModelLoadError(f"model not found: {where}, and it is gated on {endpoint}: accept its terms on "
                             f"the model page and set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise ModelLoadError(f"model not found: {where}, and it has no revision {revision!r} on {endpoint}") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"model not found: {where}, and {endpoint} has no such model (a private one needs "
                             f"HF_TOKEN)") from None
    except OfflineModeIsEnabled:
        raise ModelLoadError(_offline_message(where)) from None
    except HfHubHTTPError as e:
        raise ModelLoadError(f"model not found: {where}, and {endpoint} answered {first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - the transport's own errors (DNS, refused, timeout) differ by version
        raise ModelLoadError(f"model not found: {where}, and no hub is reachable at {endpoint} "
                             f"({type(e).__name__}: {first_line(e)}; HF_HUB_OFFLINE=1 skips the hub): download "
                             f"it where one is, or set HF_HUB_CACHE to a cache that holds it") from None
    what = "config.json" if need == "config" else "config, tokenizer and safetensors weights"
    print(f"opsctl: downloading the {what} of {repo_id} from {endpoint} into {cache}", file=sys.stderr, flush=True)
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=str(cache), etag_timeout=timeout,
                                 allow_patterns=_CONFIG_PATTERNS if need == "config" else _ALL_PATTERNS,
                                 ignore_patterns=_SUBFOLDERS)
    except Exception as e:  # noqa: BLE001 - network, disk or hub failures mid-download: one line, not a trace
        raise ModelLoadError(f"could not download {repo_id} into {cache}: {type(e).__name__}: {first_line(e)}: "
                             f"run again to resume") from None
    return Path(path)


def _offline_message(where: str) -> str:
    return (f"model not found: {where}, and HF_HUB_OFFLINE is set so nothing is downloaded: unset it where a "
            f"hub is reachable, or set HF_HUB_CACHE to a cache that holds the model")


def _probe_timeout() -> float:
    """Seconds the hub has to answer the first request: HF_HUB_ETAG_TIMEOUT (huggingface_hub's
    timeout for metadata requests), else 5 s, shorter than its 10 s default since start-up waits."""
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or DEFAULT_PROBE_TIMEOUT_S)
    except ValueError:
        return DEFAULT_PROBE_TIMEOUT_S


def _has_weights_and_tokenizer(snapshot: Path) -> bool:
    """Whether a cached snapshot is complete enough to load; an interrupted download is not (its
    shards are missing), nor is a snapshot that `opsctl plan` filled with config.json alone."""
    if not any((snapshot / name).is_file() for name in TOKENIZER_FILES):
        return False
    index_file = snapshot / "model.safetensors.index.json"
    if index_file.is_file():
        try:
            shards = set(json.loads(index_file.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError, TypeError):
            return True  # a broken index: the loader's checks name it (source._check_weights)
        return all((snapshot / shard).is_file() for shard in shards)
    return any(snapshot.glob("*.safetensors"))
