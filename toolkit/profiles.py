"""Hardware profiles: load and validate profiles/*.yaml, and find the profile of the local GPU.

One YAML per card (datasheet figures, dense tensor throughput with FP32 accumulation, a source
line). `memory_gib` is the datasheet capacity taken as GiB (2^30 bytes); drivers report a little
less (an H100 80GB shows 79.6 GiB), which the planner's runtime reserve absorbs.

Where profiles are read from, first found wins: the `dir` argument, $OPSCTL_PROFILES_DIR, then
profiles/ next to the toolkit package (the repository root, also for an editable install), then
<prefix>/share/opsctl/profiles where a regular install puts them (pyproject data-files).

`--gpu auto` asks NVML (pynvml) for the local cards and matches their names against each
profile's `pynvml_names`; with no NVIDIA GPU it falls back to the `cpu` profile, with a note.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROFILES_ENV = "OPSCTL_PROFILES_DIR"
CPU_PROFILE = "cpu"

Positive = Annotated[float, Field(gt=0)]


class ProfileError(ValueError):
    """An unknown profile name, an invalid profile file, or a card no profile matches."""


class MeasuredFigures(BaseModel):
    """Figures measured on a real machine; they take precedence over the datasheet in estimates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_bandwidth_gbs: Optional[Positive] = None
    bf16_tflops: Optional[Positive] = None
    source: str = Field(min_length=1)


class HardwareProfile(BaseModel):
    """One accelerator (or the CPU host): memory, bandwidth, tensor throughput, power, links."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    display_name: str = Field(min_length=1)
    vendor: str
    arch: str
    memory_gib: Positive
    memory_type: str = ""
    memory_bandwidth_gbs: Positive
    bf16_tflops: Positive  # dense tensor throughput, FP32 accumulate
    fp16_tflops: Positive  # dense tensor throughput, FP32 accumulate
    int8_tops: Positive  # dense
    fp8_supported: bool
    bf16_supported: bool
    tdp_w: Positive
    interconnect: str
    nvlink_gbs: Annotated[float, Field(ge=0)] = 0.0
    pcie_gen: Optional[Annotated[int, Field(ge=1)]] = None
    pynvml_names: list[str] = Field(default_factory=list)
    measured: Optional[MeasuredFigures] = None
    source: str = Field(min_length=1)

    @property
    def memory_bytes(self) -> int:
        """Card memory in bytes as the planner counts it: memory_gib x 2^30."""
        return int(self.memory_gib * 2**30)

    def bandwidth(self) -> tuple[float, str]:
        """(GB/s, "measured" or "datasheet"): the measured figure when the profile has one."""
        if self.measured and self.measured.memory_bandwidth_gbs:
            return self.measured.memory_bandwidth_gbs, "measured"
        return self.memory_bandwidth_gbs, "datasheet"

    def tensor_tflops(self) -> tuple[float, str]:
        """(16-bit dense tensor TFLOP/s, "measured" or "datasheet").

        The bf16 figure (fp16 where bf16 is unsupported); it is the same for fp16 on every card
        profiled, and weight-only int8/AWQ kernels also compute in 16 bits.
        """
        if self.measured and self.measured.bf16_tflops:
            return self.measured.bf16_tflops, "measured"
        return (self.bf16_tflops if self.bf16_supported else self.fp16_tflops), "datasheet"

    def matches(self, device_name: str) -> int:
        """Length of the longest of `pynvml_names` found in `device_name` as whole words; 0 if none.

        Whole words so that "A10" does not match "A100" or "A10G", nor "L40S" match "L40".
        """
        best = 0
        for pattern in self.pynvml_names:
            regex = r"(?<![A-Za-z0-9])" + re.escape(pattern) + r"(?![A-Za-z0-9])"
            if re.search(regex, device_name, flags=re.IGNORECASE):
                best = max(best, len(pattern))
        return best


def profiles_dir(directory: str | os.PathLike | None = None) -> Path:
    """The profiles directory: `directory`, else $OPSCTL_PROFILES_DIR, else <repo>/profiles, else the
    installed copy under <prefix>/share/opsctl/profiles."""
    if directory is not None:
        return Path(directory).expanduser()
    configured = os.environ.get(PROFILES_ENV)
    if configured:
        return Path(configured).expanduser()
    beside = Path(__file__).resolve().parent.parent / "profiles"
    installed = Path(sys.prefix) / "share" / "opsctl" / "profiles"
    return beside if beside.is_dir() or not installed.is_dir() else installed


def load_profile_file(path: str | os.PathLike) -> HardwareProfile:
    """Read and validate one profile YAML; any problem is a one-line ProfileError naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ProfileError(f"cannot read profile {path}: {_one_line(e)}") from e
    if not isinstance(data, dict):
        raise ProfileError(f"invalid profile {path}: expected a mapping of fields, got {type(data).__name__}")
    try:
        profile = HardwareProfile.model_validate(data)
    except ValidationError as e:
        raise ProfileError(f"invalid profile {path}: {_validation_summary(e)}") from None
    if profile.name != path.stem:
        raise ProfileError(f"invalid profile {path}: name {profile.name!r} differs from the file name {path.stem!r}")
    return profile


def load_profiles(dir: str | os.PathLike | None = None) -> dict[str, HardwareProfile]:  # noqa: A002 - the brief's name
    """{name: profile} of every *.yaml in the profiles directory, sorted by name."""
    root = profiles_dir(dir)
    if not root.is_dir():
        raise ProfileError(f"no profiles directory at {root} (set ${PROFILES_ENV} to the folder of *.yaml profiles)")
    files = sorted(list(root.glob("*.yaml")) + list(root.glob("*.yml")))
    if not files:
        raise ProfileError(f"no *.yaml profiles in {root}")
    return {p.name: p for p in (load_profile_file(f) for f in files)}


def get_profile(name: str, dir: str | os.PathLike | None = None) -> HardwareProfile:  # noqa: A002
    """The profile called `name` (case-insensitive); unknown names are a ProfileError listing the known ones."""
    profiles = load_profiles(dir)
    key = name.strip().lower()
    if key in profiles:
        return profiles[key]
    raise ProfileError(f"unknown GPU profile {name!r}: known profiles are {', '.join(profiles)} "
                       f"(or 'auto' to detect the local GPU)")


def detect_local_gpus() -> tuple[list[tuple[int, str, float]], str]:
    """([(index, name, memory_total_gib)], reason): the NVIDIA GPUs NVML sees.

    With none, the list is empty and `reason` says why ("no NVIDIA GPU found (NVML: ...)");
    otherwise `reason` is "".
    """
    try:
        import pynvml
    except ImportError as e:
        return [], f"no NVIDIA GPU found (NVML: pynvml is not installed: {e})"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return [], f"no NVIDIA GPU found (NVML: {_one_line(e)})"
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append((index, name, memory.total / 2**30))
    except pynvml.NVMLError as e:
        return [], f"no NVIDIA GPU found (NVML: {_one_line(e)})"
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    if not gpus:
        return [], "no NVIDIA GPU found (NVML: the driver reports 0 devices)"
    return gpus, ""


def profile_for_gpu_name(device_name: str, profiles: dict[str, HardwareProfile] | None = None
                         ) -> HardwareProfile | None:
    """The profile whose `pynvml_names` best match `device_name` (longest match), or None."""
    profiles = load_profiles() if profiles is None else profiles
    scored = [(p.matches(device_name), p) for p in profiles.values()]
    scored = [(score, p) for score, p in scored if score]
    return max(scored, key=lambda item: item[0])[1] if scored else None


@dataclass(frozen=True)
class ResolvedGpu:
    """What `--gpu` resolved to: the profile, and a note on how (empty for an explicit name)."""

    profile: HardwareProfile
    note: str = ""
    detected_name: str | None = None


def resolve_gpu(spec: str, dir: str | os.PathLike | None = None) -> ResolvedGpu:  # noqa: A002
    """`--gpu auto|NAME`: auto detects GPU 0 with NVML (the cpu profile when there is none)."""
    if spec.strip().lower() != "auto":
        return ResolvedGpu(get_profile(spec, dir))
    profiles = load_profiles(dir)
    gpus, reason = detect_local_gpus()
    if not gpus:
        if CPU_PROFILE not in profiles:
            raise ProfileError(f"{reason}; and there is no '{CPU_PROFILE}' profile to fall back to: pass --gpu NAME")
        return ResolvedGpu(profiles[CPU_PROFILE], note=f"{reason}; using the '{CPU_PROFILE}' profile")
    index, name, memory_gib = gpus[0]
    profile = profile_for_gpu_name(name, profiles)
    if profile is None:
        raise ProfileError(f"no profile matches GPU {index} ({name}, {memory_gib:.1f} GiB): pass --gpu NAME, "
                           f"one of {', '.join(profiles)}, or add a YAML to {profiles_dir(dir)}")
    note = f"detected GPU {index}: {name} ({memory_gib:.1f} GiB) -> profile '{profile.name}'"
    if len(gpus) > 1:
        note += f"; {len(gpus)} GPUs present, planning for one"
    return ResolvedGpu(profile, note=note, detected_name=name)


def _validation_summary(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown field")
        elif item["type"] == "missing":
            parts.append(f"{where}: missing")
        else:
            parts.append(f"{where}: {item['msg']} (got {item.get('input')!r})")
    return "; ".join(parts)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return " ".join(text.split()) if text else type(error).__name__
