"""Temporary folders in the model cache that never outlive their owner for long.

A pull (`.pull-*`: wheel and GGUF, ~190 MB) or a GGUF conversion (`.tmp-*`: the converted model,
~500 MB for the default one) writes into a temporary folder beside its target, then renames the
result into place. `owned_temp_dir` removes its folder on every way out of its block (exception,
Ctrl-C) and, while the block runs, holds an exclusive flock on `<folder>.lock`. A process killed
outright (SIGKILL, OOM killer, power loss) cannot clean up, but the kernel drops its lock: so
`sweep_leftovers`, run before each new temporary folder is made and by `opsctl models list`, removes
exactly the folders whose lock it can take, never one a running process holds, even a process in
another container sharing the cache (a flock is on the file; a pid means nothing across pid
namespaces). Folders without a lock file were left by opsctl versions before these locks (the
owner's own order, lock file first and last, never leaves one otherwise); they go once older than
LEGACY_AGE_S, a span no conversion of theirs went quiet for.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

TEMP_PREFIXES = (".pull-", ".tmp-", ".old-")
LOCK_SUFFIX = ".lock"
LEGACY_AGE_S = 3600.0


@contextlib.contextmanager
def owned_temp_dir(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A new folder `parent/<prefix>XXXXXXXX`, locked while the block runs and removed when it ends.

    Leftovers of dead owners in `parent` are swept first. `prefix` must start with one of
    TEMP_PREFIXES (that is what the sweep looks for).
    """
    if not prefix.startswith(TEMP_PREFIXES):
        raise ValueError(f"temporary folders in the cache start with one of {TEMP_PREFIXES}, not {prefix!r}")
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(parent)
    fd, lock = _new_locked_file(parent, prefix)
    folder = lock.with_name(lock.name[:-len(LOCK_SUFFIX)])
    try:
        folder.mkdir()  # new: its lock file's name was (O_EXCL), and a sweep removes folders before locks
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lock.unlink(missing_ok=True)  # last, so the folder is never seen without its lock while we live
        os.close(fd)


def sweep_leftovers(parent: str | os.PathLike) -> list[tuple[Path, int]]:
    """Remove the temporary folders (and lock files) in `parent` whose owner is gone.

    Returns (folder, bytes it held) for each folder removed.
    """
    parent = Path(parent)
    try:
        entries = list(os.scandir(parent))
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = {e.name for e in entries}
    removed = []
    for entry in entries:
        name = entry.name
        if not name.startswith(TEMP_PREFIXES):
            continue
        if name.endswith(LOCK_SUFFIX):
            folder = parent / name[:-len(LOCK_SUFFIX)]
            size = _remove_if_orphaned(parent / name, folder)
            if size is not None:
                removed.append((folder, size))
        elif entry.is_dir(follow_symlinks=False) and name + LOCK_SUFFIX not in names:
            with contextlib.suppress(OSError):
                if time.time() - entry.stat(follow_symlinks=False).st_mtime > LEGACY_AGE_S:
                    size = _size(Path(entry.path))
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append((Path(entry.path), size))
    return [(folder, size) for folder, size in removed if size is not None]


def _new_locked_file(parent: Path, prefix: str) -> tuple[int, Path]:
    """(fd, path) of a new lock file, exclusively locked by us."""
    while True:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=LOCK_SUFFIX, dir=parent)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a sweep holds it: a sweep is quick
        except OSError:
            # No locks on this file system (ENOLCK): go on unlocked. Sweeps cannot lock either, so
            # they keep the folder; leftovers then stay, but a running pull is never removed.
            return fd, Path(name)
        # Between mkstemp and flock a sweep may have taken the new file for an orphan and unlinked it.
        if _is_file_of(fd, name):
            return fd, Path(name)
        os.close(fd)


def _remove_if_orphaned(lock: Path, folder: Path) -> int | None:
    """Take `lock` if no one holds it, then remove `folder` and `lock` and return the bytes the
    folder held (None when there was no folder); None too when its owner lives."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None  # gone already (its owner finished, or another sweep was quicker)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return None  # held: its owner runs (or locks do not work here: then keep it too)
        if not _is_file_of(fd, str(lock)):
            return None  # another sweep removed it between our open and our lock
        size = _size(folder)
        shutil.rmtree(folder, ignore_errors=True)
        lock.unlink(missing_ok=True)
        return size
    finally:
        os.close(fd)


def _is_file_of(fd: int, path: str) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _size(folder: Path) -> int | None:
    """Bytes under `folder`, None when it does not exist."""
    if not folder.is_dir():
        return None
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return total
