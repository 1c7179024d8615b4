"""Hardware profiles: load and validate profiles/*.yaml, and find the profile of the local GPU.

One YAML per card (datasheet figures, dense tensor throughput with FP32 accumulation, a source
line). `memory_gib` is the datasheet capacity taken as GiB (2^30 bytes); torch sees less (an H200
shows 139.8 GiB of its 141, an H100 79.2 of 80).

Two blocks of measured figures, which win over the datasheet's:
- `measured`: figures measured by hand on this workplace's card (copy bandwidth, a big bf16 matmul),
  with a source line.
- `calibration`: figures derived from committed runs by `python -m toolkit.calibrate` (never typed
  in): the memory torch reports as usable, and the efficiencies the engine reaches, each a fraction
  of the profile's roofline figures (`bandwidth()`, `tensor_tflops()`) with the file and figure it
  came from. `efficiency()` resolves them for the planner: the card's own calibration, else a default
  from the calibrated cards of the same vendor (their mean fraction of the datasheet figure), else
  the bare roofline (efficiency 1), saying which for each figure. A profile without calibration
  plans on its datasheet memory.

Where profiles are read from, first found wins: the `dir` argument, $OPSCTL_PROFILES_DIR, then
profiles/ next to the toolkit package (the repository root, also for an editable install), then
<prefix>/share/opsctl/profiles where a regular install puts them (pyproject data-files).

A profile describes one card; `gpu_count` says how many such cards a machine has (default 1).
`--gpu NAMExN` asks for N cards of a profile without a new YAML (`rtx4090x2`: two RTX 4090s);
`tp_link()` gives the link tensor-parallel collectives cross between them (see TpLink).

`--gpu auto` asks NVML (pynvml) for the local cards and matches their names against each
profile's `pynvml_names`, counting the cards of GPU 0's kind; with no NVIDIA GPU it falls back to
the `cpu` profile, with a note.
"""
from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Mapping, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROFILES_ENV = "OPSCTL_PROFILES_DIR"
CPU_PROFILE = "cpu"

Positive = Annotated[float, Field(gt=0)]
# A fraction of a roofline figure. Above 1 is possible (a read-only stream can beat the copy test
# that measured the bandwidth), above 1.5 means the roofline figure itself is wrong.
Fraction = Annotated[float, Field(gt=0, le=1.5)]
EFFICIENCY_FIGURES = ("decode_bandwidth_efficiency", "gemm_efficiency", "prefill_efficiency")

# The links tensor parallelism crosses, per direction (what a ring all-reduce is bound by: each GPU
# sends and receives at once; nccl-tests' "busbw" is this figure).
# PCIe x16 by generation, GB/s per direction: 16 lanes x transfer rate x line-code efficiency / 8 (PCI-SIG
# base specifications: gen1 2.5 GT/s and gen2 5 GT/s 8b/10b, gen3 8 GT/s, gen4 16 GT/s and gen5 32 GT/s
# 128b/130b, gen6 64 GT/s FLIT 242/256). REFERENCE.md gives each card's generation ("PCIe 4").
PCIE_X16_GBS = {1: 4.0, 2: 8.0, 3: 15.75, 4: 31.5, 5: 63.0, 6: 121.0}
# The fraction of a link's figure collectives reach: ~25 of gen4's 31.5 GB/s, ~50 of gen5's 63 (the
# issue's figures for PCIe). An estimate, not measured here; nccl-tests reports put NVLink nearby (an A100
# pair over NV12, 300 GB/s a direction: all_reduce busbw 208, NVIDIA/nccl-tests#178).
LINK_EFFICIENCY = 0.8
# Fixed time of one small collective between two cards, microseconds, growing with log2(ranks) (a tree's
# depth: NCCL picks tree/LL algorithms for small messages). Estimates from public nccl-tests runs, not
# measured here: 2 H100s over NVLink ~6 us (NVIDIA/nccl#1259); 8 RTX 4090s over PCIe 42.6 us for 8 bytes
# (NVIDIA/nccl#1530) = 3 x ~14, 8 RTX 3090s 54 us (NVIDIA/nccl#1439).
PCIE_LATENCY_US = 15.0
NVLINK_LATENCY_US = 5.0


class ProfileError(ValueError):
    """An unknown profile name, an invalid profile file, or a card no profile matches."""


class MeasuredFigures(BaseModel):
    """Figures measured on a real machine; they take precedence over the datasheet in estimates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_bandwidth_gbs: Optional[Positive] = None
    bf16_tflops: Optional[Positive] = None
    source: str = Field(min_length=1)


# Each figure of a Calibration and the field that names the runs it came from (the validator, efficiency()
# and `opsctl profiles show` pair them by this one table).
CALIBRATION_SOURCES = {"usable_memory_gib": "usable_memory_source", "decode_bandwidth_efficiency": "decode_source",
                       "gemm_efficiency": "gemm_source", "prefill_efficiency": "prefill_source"}


class Calibration(BaseModel):
    """Figures derived from committed runs by `python -m toolkit.calibrate`, each with its source.

    decode_bandwidth_efficiency: batch-1 decode tok/s / the planner's roofline at the profile's
        bandwidth() (weights + KV read once a step), same model and context.
    gemm_efficiency: the fraction of tensor_tflops() that makes the planner's serving model
        (planner.predict_throughput: prefills + decode steps of a full batch) give the measured
        output tok/s of big-batch runs.
    prefill_efficiency: one prompt's prefill FLOPs / its measured TTFT, over tensor_tflops().
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    usable_memory_gib: Optional[Positive] = None  # what torch reports as the card's total memory
    usable_memory_source: Optional[str] = None
    decode_bandwidth_efficiency: Optional[Fraction] = None
    decode_source: Optional[str] = None
    gemm_efficiency: Optional[Fraction] = None
    gemm_source: Optional[str] = None
    prefill_efficiency: Optional[Fraction] = None
    prefill_source: Optional[str] = None

    @model_validator(mode="after")
    def _sources(self) -> "Calibration":
        for figure, source in CALIBRATION_SOURCES.items():
            if (getattr(self, figure) is None) != (not getattr(self, source)):
                raise ValueError(f"{figure} and {source} go together: a figure needs the run it came from")
        return self


@dataclass(frozen=True)
class Efficiency:
    """Fractions of a profile's roofline figures that the engine reaches, and where each came from.

    decode_bandwidth scales bandwidth(); gemm and prefill scale tensor_tflops(). `origins` says, per
    figure, "calibrated: <source>", "default: ..." or "roofline: ..." in words.
    """

    decode_bandwidth: float
    gemm: float
    prefill: float
    origins: dict[str, str] = field(default_factory=dict)

    @classmethod
    def roofline(cls, why: str = "no efficiency applied") -> "Efficiency":
        return cls(1.0, 1.0, 1.0, {f: f"roofline: {why}" for f in EFFICIENCY_FIGURES})

    @property
    def is_roofline(self) -> bool:
        return all(o.startswith("roofline") for o in self.origins.values())


@dataclass(frozen=True)
class TpLink:
    """The link tensor-parallel collectives of `tp` ranks cross, as the planner prices them.

    gbs: achievable GB/s per direction (the link's figure x LINK_EFFICIENCY, or the profile's own
    tp_link_gbs); latency_us: the fixed time of one collective at this tp; source: how, in words.
    """

    tp: int
    kind: str  # "NVLink", "PCIe 4.0 x16"
    gbs: float
    latency_us: float
    source: str


class HardwareProfile(BaseModel):
    """One accelerator (or the CPU host): memory, bandwidth, tensor throughput, power, links; and
    how many such cards the machine has (`gpu_count`: memory and speeds stay per card)."""

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
    nvlink_gbs: Annotated[float, Field(ge=0)] = 0.0  # NVIDIA's figure: both directions together, per card
    nvlink_gpus: Optional[Annotated[int, Field(ge=2)]] = None  # cards one NVLink domain joins (a bridge: 2); None: all
    pcie_gen: Optional[Annotated[int, Field(ge=1)]] = None
    gpu_count: Annotated[int, Field(ge=1)] = 1  # cards in the machine, each with the figures above
    tp_link_gbs: Optional[Positive] = None  # GB/s a direction between the cards, as measured; wins over tp_link()'s estimate
    pynvml_names: list[str] = Field(default_factory=list)
    measured: Optional[MeasuredFigures] = None
    calibration: Optional[Calibration] = None
    source: str = Field(min_length=1)

    @property
    def memory_bytes(self) -> int:
        """Datasheet card memory in bytes: memory_gib x 2^30."""
        return int(self.memory_gib * 2**30)

    def usable_memory(self) -> tuple[float, str]:
        """(GiB, "measured" or "datasheet"): the memory torch reports where a run recorded it."""
        if self.calibration and self.calibration.usable_memory_gib:
            return self.calibration.usable_memory_gib, "measured"
        return self.memory_gib, "datasheet"

    @property
    def usable_memory_bytes(self) -> int:
        """The memory the planner sizes with: usable_memory() x 2^30."""
        return int(self.usable_memory()[0] * 2**30)

    @property
    def datasheet_tensor_tflops(self) -> float:
        """16-bit dense tensor TFLOP/s from the datasheet (fp16 where bf16 is unsupported)."""
        return self.bf16_tflops if self.bf16_supported else self.fp16_tflops

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
        return self.datasheet_tensor_tflops, "datasheet"

    @property
    def spec(self) -> str:
        """What `--gpu` takes for this machine: the name, with xN for N cards (rtx4090x2)."""
        return self.name if self.gpu_count == 1 else f"{self.name}x{self.gpu_count}"

    def tp_link(self, tp: int) -> TpLink | None:
        """The link between `tp` of this machine's cards, or None where the profile names none (the CPU
        host; a card with neither nvlink_gbs nor pcie_gen nor tp_link_gbs).

        NVLink where the card has it and its domain spans `tp` cards (an RTX 3090's bridge joins two),
        at half nvlink_gbs (NVIDIA quotes both directions: 900 GB/s on an H100 is 450 each way); else
        PCIe x16 of the card's generation; either at LINK_EFFICIENCY of the figure. The fixed latency
        of a collective grows with log2(tp), from PCIE_LATENCY_US / NVLINK_LATENCY_US at 2 cards.
        """
        depth = max(math.log2(tp), 1.0)
        nvlink = self.nvlink_gbs > 0 and (self.nvlink_gpus is None or tp <= self.nvlink_gpus)
        if nvlink:
            kind, latency = "NVLink", NVLINK_LATENCY_US * depth
            derived = self.nvlink_gbs / 2 * LINK_EFFICIENCY
            how = f"{LINK_EFFICIENCY:g} x half the {self.nvlink_gbs:g} GB/s NVLink figure (both directions)"
        elif self.pcie_gen in PCIE_X16_GBS:
            kind, latency = f"PCIe {self.pcie_gen}.0 x16", PCIE_LATENCY_US * depth
            derived = PCIE_X16_GBS[self.pcie_gen] * LINK_EFFICIENCY
            how = f"{LINK_EFFICIENCY:g} x the {PCIE_X16_GBS[self.pcie_gen]:g} GB/s a direction of {kind}"
            if self.nvlink_gbs > 0:
                how += f" (NVLink joins {self.nvlink_gpus} cards, fewer than {tp})"
        elif self.tp_link_gbs:  # a link the fields above do not describe, with its figure
            kind, latency = "link", PCIE_LATENCY_US * depth
        else:
            return None
        if self.tp_link_gbs:
            return TpLink(tp, kind, self.tp_link_gbs, latency, f"{self.tp_link_gbs:g} GB/s a direction: the "
                                                                f"profile's tp_link_gbs")
        return TpLink(tp, kind, derived, latency, f"{derived:g} GB/s a direction = {how} (estimate)")

    def calibrated(self, figure: str) -> float | None:
        """One of EFFICIENCY_FIGURES from this profile's own calibration, or None."""
        return getattr(self.calibration, figure) if self.calibration else None

    def datasheet_fraction(self, figure: str) -> float | None:
        """A calibrated efficiency re-expressed as a fraction of the datasheet figure (the profile's
        roofline figure may be a measured one): what carries over to a card with no runs."""
        value = self.calibrated(figure)
        if value is None:
            return None
        if figure == "decode_bandwidth_efficiency":
            return value * self.bandwidth()[0] / self.memory_bandwidth_gbs
        return value * self.tensor_tflops()[0] / self.datasheet_tensor_tflops


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


def efficiency(profile: HardwareProfile, profiles: Mapping[str, HardwareProfile] | None = None) -> Efficiency:
    """The efficiencies the planner applies on `profile` (see the module docstring for the order).

    `profiles` are the cards a default is derived from (default: load_profiles(); unreadable
    profiles leave no default). Only cards of the same vendor count: a GPU's efficiency says
    nothing about a CPU host.
    """
    if profiles is None:
        try:
            profiles = load_profiles()
        except ProfileError:
            profiles = {}
    values, origins = {}, {}
    for figure in EFFICIENCY_FIGURES:
        own = profile.calibrated(figure)
        if own is not None:
            values[figure] = own
            origins[figure] = f"calibrated: {getattr(profile.calibration, CALIBRATION_SOURCES[figure])}"
            continue
        donors = {p.name: p.datasheet_fraction(figure) for p in profiles.values()
                  if p.name != profile.name and p.vendor == profile.vendor and p.calibrated(figure) is not None}
        if not donors:
            values[figure] = 1.0
            origins[figure] = f"roofline: no {profile.vendor} card has a calibrated {figure}"
            continue
        of_datasheet = sum(donors.values()) / len(donors)
        own_roof, datasheet = ((profile.bandwidth()[0], profile.memory_bandwidth_gbs)
                               if figure == "decode_bandwidth_efficiency"
                               else (profile.tensor_tflops()[0], profile.datasheet_tensor_tflops))
        values[figure] = of_datasheet * datasheet / own_roof
        origins[figure] = (f"default: {of_datasheet:.3f} of the datasheet figure, the mean of the calibrated "
                           f"{', '.join(sorted(donors))} (no run of this card)")
    return Efficiency(decode_bandwidth=values["decode_bandwidth_efficiency"], gemm=values["gemm_efficiency"],
                      prefill=values["prefill_efficiency"],
                      origins={f: origins[f] for f in EFFICIENCY_FIGURES})


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


COUNT_SYNTAX = "NAMExN for N cards of a profile, e.g. rtx4090x2"


def get_profile(name: str, dir: str | os.PathLike | None = None) -> HardwareProfile:  # noqa: A002
    """The profile called `name` (case-insensitive), or NAMExN: N cards of profile NAME (its gpu_count
    set to N). Unknown names and bad counts are a ProfileError in one line (the known names listed)."""
    profiles = load_profiles(dir)
    key = name.strip().lower()
    if key in profiles:  # an exact name wins: a profile may itself end in x and digits
        return profiles[key]
    # The longest known name followed by "x": what is left must be the count.
    base = max((n for n in profiles if key.startswith(n + "x")), key=len, default=None)
    if base is None:
        raise ProfileError(f"unknown GPU profile {name!r}: known profiles are {', '.join(profiles)} "
                           f"(or 'auto' to detect the local GPUs; {COUNT_SYNTAX})")
    count = key[len(base) + 1:]
    if not count.isdigit() or int(count) < 1:
        raise ProfileError(f"GPU profile {name!r}: the card count after '{base}x' must be a whole number >= 1 "
                           f"({COUNT_SYNTAX})")
    if base == CPU_PROFILE:
        raise ProfileError(f"GPU profile {name!r}: the '{CPU_PROFILE}' profile is the host, not a card: it takes "
                           f"no card count")
    return with_gpu_count(profiles[base], int(count))


def with_gpu_count(profile: HardwareProfile, count: int) -> HardwareProfile:
    """`profile` for a machine of `count` such cards (figures per card unchanged)."""
    if count < 1:
        raise ProfileError(f"a machine has at least one card (got {count})")
    return profile.model_copy(update={"gpu_count": count})


def capped_memory(profile: HardwareProfile, gib: float) -> HardwareProfile:
    """`profile` with at most `gib` GiB usable (an engine run with --gpu-memory-gb): its speeds and
    efficiencies stay, what fits is sized with the cap."""
    if gib >= profile.usable_memory()[0]:
        return profile
    update = {"memory_gib": gib}  # below the usable memory, so below the datasheet's too
    if profile.calibration is not None:
        update["calibration"] = profile.calibration.model_copy(
            update={"usable_memory_gib": gib, "usable_memory_source": f"--gpu-memory-gb {gib:g}"})
    return profile.model_copy(update=update)


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
    """`--gpu auto|NAME|NAMExN`: auto detects the local GPUs with NVML (the cpu profile when there is
    none) and counts those of GPU 0's kind, as far as $CUDA_VISIBLE_DEVICES lets the engine see them."""
    key = spec.strip().lower()
    if key.startswith("auto") and key != "auto":
        raise ProfileError(f"--gpu {spec!r}: 'auto' counts the local GPUs itself and takes no count; for a "
                           f"machine that is not this one, name its profile ({COUNT_SYNTAX})")
    if key != "auto":
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
    if len(gpus) == 1:
        return ResolvedGpu(profile, note=note, detected_name=name)
    # Tensor parallelism splits a model over cards of one kind: count GPU 0's kind only.
    alike = [g for g in gpus if g[1] == name]
    count, visible = len(alike), _cuda_visible_count()
    note += f"; {len(gpus)} GPUs present, {count} of this kind"
    if visible is not None and visible < count:
        count = visible
        note += f", {visible} visible through $CUDA_VISIBLE_DEVICES"
    note += f": planning for {count} ({profile.name}x{count})" if count > 1 else ": planning for one"
    return ResolvedGpu(with_gpu_count(profile, max(count, 1)), note=note, detected_name=name)


def _cuda_visible_count() -> int | None:
    """How many devices $CUDA_VISIBLE_DEVICES lets CUDA see (NVML ignores it), None when it is unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return len([part for part in value.split(",") if part.strip() and part.strip() != "-1"])


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
