"""One tune per run folder: a second `opsctl tune` on a run id that a running tune holds fails at once,
in one line naming the holder, instead of racing it to tune.json and into its servers (two tunes
started within a second used to both pass the "holds a tune already" check and then got each other's
HTTP 401s). The lock is the kernel's (flock): it goes when its holder does, however that ends."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.tune.runner import LOCK_FILE, TuneError, run_lock

ROOT = Path(__file__).resolve().parents[2]


def test_a_held_run_folder_refuses_a_second_holder_and_frees_on_exit(tmp_path):
    with run_lock(tmp_path / "r1"):
        assert (tmp_path / "r1" / LOCK_FILE).read_text() == f"pid {os.getpid()}"
        with pytest.raises(TuneError, match=rf"another opsctl tune \(pid {os.getpid()}\) is running in .*r1"):
            with run_lock(tmp_path / "r1"):
                pass
        with run_lock(tmp_path / "r2"):  # another run id: no conflict
            pass
    assert not (tmp_path / "r1" / LOCK_FILE).exists()
    with run_lock(tmp_path / "r1"):  # free again
        pass


def test_a_killed_holder_leaves_no_lock(tmp_path):
    # A process that takes the lock and dies without cleaning up (SIGKILL): the kernel drops its flock,
    # and the file it leaves behind holds nobody.
    code = ("import os, signal, sys; from pathlib import Path; from toolkit.tune.runner import run_lock\n"
            f"with run_lock(Path({str(tmp_path / 'r1')!r})):\n"
            "    print('held', flush=True); os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == -9 and "held" in proc.stdout
    assert (tmp_path / "r1" / LOCK_FILE).exists()
    with run_lock(tmp_path / "r1"):
        pass


def test_opsctl_tune_on_a_held_run_id_exits_2_before_any_trial(tmp_path):
    with run_lock(tmp_path / "busy"):
        proc = subprocess.run([sys.executable, "-m", "toolkit", "tune", "--gpu", "cpu", "--run-id", "busy",
                               "-o", str(tmp_path), "--max-trials", "1"],
                              capture_output=True, text=True, cwd=ROOT, timeout=300,
                              env={**os.environ, "COLUMNS": "300"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"another opsctl tune (pid {os.getpid()}) is running in" in proc.stdout + proc.stderr
    assert "trial" not in proc.stdout
    assert not (tmp_path / "busy" / "tune.json").exists()
