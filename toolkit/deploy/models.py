"""What `opsctl deploy` deploys: one ModelDeployment per model, from a tune run or from flags.

From a tune run (reports/<run>/tune.json): the chosen trial's flags, parsed back by `opsctl serve`'s
own parser (so what the tune measured is what the pod runs), without the memory cap that emulated a
smaller card on a bigger one; GPUs as the tune wrote its deploy.yaml (none on the cpu profile, else
the tensor-parallel width); on a CPU profile the pod asks for the weights and the KV budget in host
memory. From flags: `--model NAME=SPEC` with the engine flags given on the command line.

The served name (`opsctl serve --model-name`, what clients put in `model` and the proxy routes by)
defaults to the name `opsctl serve` itself would serve: the directory's name, the GGUF file's stem,
the preset or hub id as written, SmolLM2-135M-Instruct for the embedded default.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.config import EngineConfig
from engine.models.default_model import DEFAULT_MODEL_NAME

from ..tune.launch import cpu_memory_request, k8s_name

PROXY_NAME = "opsctl-proxy"


class DeployError(ValueError):
    """Bad deploy input (a missing tune run, a name clash); the message is one line saying what to fix."""


@dataclass(frozen=True)
class ModelDeployment:
    served_name: str  # --model-name: what requests name
    spec: str | None  # the MODEL argument of `opsctl serve` (None: the embedded default)
    config: EngineConfig
    gpus: int  # nvidia.com/gpu per pod (0: a CPU pod)
    memory_gib: float | None = None  # host memory the pod requests (CPU pods)
    source: str = "flags"  # "flags" or the tune.json it came from

    @property
    def k8s_name(self) -> str:
        return k8s_name(self.served_name)


def served_name(spec: str | None) -> str:
    """The name `opsctl serve SPEC` serves without --model-name (engine/models/source.py)."""
    if spec is None or spec in ("default", DEFAULT_MODEL_NAME):
        return DEFAULT_MODEL_NAME
    if spec.startswith("preset:"):
        return spec
    path = Path(spec.rstrip("/"))
    if spec.endswith(".gguf"):
        return path.stem
    if spec.startswith(("/", ".", "~")) or path.exists():
        return path.name
    return spec  # a hub id, as written


def split_named(value: str) -> tuple[str | None, str]:
    """`NAME=VALUE` -> (NAME, VALUE); a value without a name part (or whose part before `=` holds a path
    separator or a colon, as in /models/a=b or preset:x) -> (None, value)."""
    name, sep, rest = value.partition("=")
    if sep and name and not any(c in name for c in "/:\\~"):
        return name, rest
    return None, value


def config_from_flags(flags: list[str]) -> EngineConfig:
    """The EngineConfig that `opsctl serve FLAGS` would build, parsed by serve's own parser."""
    import typer.main

    from ..commands.engine_options import ENGINE_FLAGS
    from ..commands.serve import serve

    app = typer.Typer()
    app.command()(serve)
    command = typer.main.get_command(app)
    try:
        params = command.make_context("serve", list(flags)).params
    except Exception as e:  # noqa: BLE001 - click's usage errors: a flag this opsctl no longer has
        raise DeployError(f"cannot read the tuned flags {' '.join(flags)!r}: {e}") from None
    return EngineConfig(**{name: params[param] for name, param, _, _ in ENGINE_FLAGS})


def _pod_gpus(config: EngineConfig, cpu: bool, gpus: int | None, what: str) -> int:
    if getattr(config, "nnodes", 1) > 1:
        raise DeployError(f"{what}: tensor parallelism across machines (--nnodes) needs a pod group per replica, "
                          "which opsctl deploy does not write; deploy one machine's worth (--tp <= GPUs per node)")
    if gpus is not None:
        return gpus
    return 0 if cpu else max(1, config.tp)


def model_from_tune(path: str | Path, name: str | None = None, *, gpus: int | None = None) -> ModelDeployment:
    """The model a tune run chose, as a deployment; `path` is the run folder or its tune.json."""
    from ..tune.schema import TuneResult

    path = Path(path)
    file = path / "tune.json" if path.is_dir() else path
    if not file.is_file():
        raise DeployError(f"--from-tune {path}: no tune.json there (give a run folder from `opsctl tune`, "
                          "e.g. reports/tune-20250101-1200)")
    try:
        result = TuneResult.read(file)
    except (ValueError, OSError) as e:
        raise DeployError(f"--from-tune {file}: not a tune result ({str(e).splitlines()[0]})") from None
    chosen = result.trial(result.chosen) if result.chosen else None
    if chosen is None:
        raise DeployError(f"--from-tune {file}: the tune chose no configuration (none met its SLO); "
                          "deploy with --model and engine flags instead")
    config = config_from_flags(chosen.flags)
    if result.emulated:
        config = config.replace(gpu_memory_gb=None)  # the cap emulated the target card; the pod has the real one
    pod_gpus = _pod_gpus(config, result.target_profile == "cpu", gpus, f"--from-tune {file}")
    weights = chosen.predicted.weights_gib if chosen.predicted else None
    return ModelDeployment(served_name=name or served_name(result.model_spec), spec=result.model_spec,
                           config=config, gpus=pod_gpus, memory_gib=cpu_memory_request(config, weights, pod_gpus),
                           source=str(file))


def model_from_flag(value: str, config: EngineConfig, *, gpus: int | None = None) -> ModelDeployment:
    """A `--model NAME=SPEC` (or `--model SPEC`; SPEC `default` for the embedded model) with `config`."""
    name, spec = split_named(value)
    spec = None if spec in ("", "default") else spec
    cpu = config.device == "cpu"
    pod_gpus = _pod_gpus(config, cpu, gpus, f"--model {value}")
    if cpu and pod_gpus:
        raise DeployError(f"--model {value}: --device cpu with --gpus {pod_gpus}: a CPU pod asks for no GPU")
    return ModelDeployment(served_name=name or served_name(spec), spec=spec, config=config, gpus=pod_gpus)


def check_unique(models: list[ModelDeployment]) -> None:
    """Every served name once, and no two Kubernetes names alike (nor the proxy's)."""
    seen: dict[str, str] = {PROXY_NAME: "the proxy"}
    for m in models:
        if m.k8s_name in seen:
            raise DeployError(f"model {m.served_name!r} would be deployed as {m.k8s_name!r}, the name of "
                              f"{seen[m.k8s_name]}: give it another name (NAME=...)")
        seen[m.k8s_name] = f"model {m.served_name!r}"
