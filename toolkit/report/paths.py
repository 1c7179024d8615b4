"""Where results may go and what they may name: run ids, run folders, files a result points at.

A run id becomes a folder name under the output directory (reports/<run-id>/), so it must be one
path component: `check_run_id` refuses "../../x", "/abs/path", "a/b", ".." and anything beyond
letters, digits, ".", "_" and "-". `run_dir` then checks that the folder, symlinks resolved, is still
inside the output directory (a `reports/x` symlink to elsewhere is refused, not written through).
A result.json names files beside it (its per-request CSVs); `file_in_result_dir` resolves such a
name against the result's own folder and refuses one that leads outside it, so rendering a result
someone sent you never reads /etc/passwd or ~/.ssh into a report.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

MAX_RUN_ID_LEN = 128
# A first character that is a letter or digit keeps out ".", "..", hidden names and option-like "-x".
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class UnsafePathError(ValueError):
    """A run id or a file name that would leave its folder; the message is one line for the user."""


def check_run_id(run_id: str) -> str:
    """`run_id` itself when it is a safe folder name, else UnsafePathError naming --run-id."""
    if not _RUN_ID.fullmatch(run_id) or len(run_id) > MAX_RUN_ID_LEN:
        raise UnsafePathError(
            f"--run-id {run_id!r} is not a folder name: use up to {MAX_RUN_ID_LEN} letters, digits, '.', '_' "
            f"and '-', starting with a letter or digit (no '/', no '..'), e.g. offline-bs32")
    return run_id


def run_dir(output_dir: str | os.PathLike, run_id: str) -> Path:
    """output_dir/run_id after checking the id, and that the folder (symlinks resolved) stays inside."""
    check_run_id(run_id)
    folder = Path(output_dir) / run_id
    root, resolved = Path(output_dir).resolve(), folder.resolve()
    if not resolved.is_relative_to(root) or resolved == root:
        raise UnsafePathError(f"--run-id {run_id!r}: {folder} is a link to {resolved}, outside "
                              f"{output_dir}: remove the link or pick another run id")
    return folder


def file_in_result_dir(result_dir: str | os.PathLike, name: str, what: str) -> Path:
    """result_dir/name, refused (UnsafePathError naming `what`) unless it stays inside result_dir."""
    root = Path(result_dir).resolve()
    path = (root / name).resolve()  # an absolute `name` replaces root here: caught just below
    if not path.is_relative_to(root) or path == root:
        raise UnsafePathError(f"{what} {name!r} points outside the result's folder {root}: a result may only "
                              f"name files beside it")
    return path
