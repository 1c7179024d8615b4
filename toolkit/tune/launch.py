"""The deployable output of a tune: launch.sh, the LMDeploy and vLLM equivalents, Kubernetes manifests.

- `serve_command` is the exact `opsctl serve` argv for a chosen EngineConfig (its `to_flags()` plus
  the server's own flags), so what was measured is what gets launched.
- `lmdeploy_command` / `vllm_command` (equivalents.py) translate the same config flag by flag.
- `kubernetes_manifests` renders a Deployment + Service running `serve_command` (yaml.safe_dump_all
  of plain dicts: `serve_manifests`, `workload_manifests`, which `opsctl deploy` builds on too),
  `write_launch_files` writes launch.sh and deploy.yaml into a tune's folder.

Memory is GiB (2^30 bytes) throughout, as in the hardware profiles.
"""
from __future__ import annotations

import inspect
import math
import re
import shlex
import textwrap
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from engine.config import EngineConfig

from .equivalents import DEFAULT_HOST, DEFAULT_PORT, lmdeploy_command, number_text, vllm_command

HEALTH_PATH = "/health"  # engine/server/app.py: 200 while serving, 503 when shutting down or the engine died
DEFAULT_STARTUP_TIMEOUT_S = 900  # weights read from slow network storage; the probe stops waiting once up
PROBE_PERIOD_S = 10


# -- opsctl serve -------------------------------------------------------------------------------
def serve_command(model: str | None, config: EngineConfig, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                  extra: Sequence[str] = ()) -> list[str]:
    """The `opsctl serve` argv that starts `model` (None: the embedded default) with `config` (only
    non-default engine flags)."""
    return ["opsctl", "serve", *([model] if model else []), *config.to_flags(), "--server-name", host, "--server-port", str(port),
            *extra]


def shell_line(argv: Sequence[str]) -> str:
    """argv as one POSIX shell line, each word quoted where needed."""
    return shlex.join(argv)


# -- Kubernetes ---------------------------------------------------------------------------------
def k8s_name(text: str) -> str:
    """A DNS-1123 label (what Deployment and Service names must be) made from any text."""
    base = re.sub(r"[^a-z0-9]+", "-", Path(text.rstrip("/")).name.lower()).strip("-")
    name = f"opsctl-{base}" if base else "opsctl"
    return name[:63].rstrip("-")


def _shutdown_timeout_s() -> float:
    """`opsctl serve`'s default --shutdown-timeout, read from the command so the two cannot drift."""
    from ..commands.serve import serve

    return float(inspect.signature(serve).parameters["shutdown_timeout"].default)


def pod_config(config: EngineConfig) -> EngineConfig:
    """The config as a pod runs it: a pod sees only the GPUs it was given, numbered from 0, so a
    --device cuda:N chosen on the tune host becomes plain cuda."""
    return config.replace(device="cuda") if config.device.startswith("cuda:") else config


def kubernetes_manifests(name: str, model: str, config: EngineConfig, *, image: str = "opsctl:latest",
                         port: int = DEFAULT_PORT, gpus: int = 1, memory_gib: float | None = None,
                         cpus: float | None = None, api_key_secret: str | None = None,
                         startup_timeout_s: int = DEFAULT_STARTUP_TIMEOUT_S, header: str = "") -> str:
    """A Deployment and a Service (one YAML stream of two documents) serving `model` with `config`.

    gpus: `nvidia.com/gpu` the pod asks for (0 on a CPU profile: none). memory_gib / cpus: the host
    memory and cores the container requests (left out when None). api_key_secret: a Secret whose key
    `api-key` becomes $OPSCTL_API_KEY (the server then wants it; /health stays open to the probes).
    header: comment lines put before the YAML.
    """
    docs = serve_manifests(name, model, config, image=image, port=port, gpus=gpus, memory_gib=memory_gib, cpus=cpus,
                           api_key_secret=api_key_secret, startup_timeout_s=startup_timeout_s)
    return comment_lines(header) + dump_manifests(docs)


def dump_manifests(docs: Sequence[dict]) -> str:
    """Plain YAML documents, keys in the order written."""
    return yaml.safe_dump_all(list(docs), sort_keys=False, default_flow_style=False)


def serve_manifests(name: str, model: str | None, config: EngineConfig, *, image: str = "opsctl:latest",
                    port: int = DEFAULT_PORT, gpus: int = 1, memory_gib: float | None = None,
                    cpus: float | None = None, api_key_secret: str | None = None,
                    startup_timeout_s: int = DEFAULT_STARTUP_TIMEOUT_S, extra: Sequence[str] = (),
                    managed_by: str = "opsctl-tune", replicas: int = 1) -> list[dict]:
    """kubernetes_manifests' Deployment and Service as dicts (`opsctl deploy` adds to them); `extra`
    is added to the `opsctl serve` arguments."""
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0 (got {gpus})")
    if gpus and config.tp > gpus:
        raise ValueError(f"tp={config.tp} needs {config.tp} GPUs; the pod asks for {gpus}")
    argv = serve_command(model, pod_config(config), host=DEFAULT_HOST, port=port, extra=extra)

    def http_get():
        return {"path": HEALTH_PATH, "port": "http"}
    resources: dict[str, dict] = {}
    requests = {}
    if cpus is not None:
        requests["cpu"] = number_text(float(cpus))
    if memory_gib is not None:
        requests["memory"] = f"{math.ceil(memory_gib)}Gi"
    if requests:
        resources["requests"] = requests
    if gpus:
        # extended resources are set as limits; Kubernetes makes the request equal to the limit
        resources["limits"] = {"nvidia.com/gpu": gpus}
    container: dict[str, Any] = {
        "name": "opsctl-serve",
        "image": image,
        "command": argv[:1],
        "args": argv[1:],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        # the server listens only once the weights are loaded: the startup probe waits that long,
        # then readiness takes the pod out of the Service while it drains (503 on shutdown) and
        # liveness restarts it when the engine died (503 engine_dead)
        "startupProbe": {"httpGet": http_get(), "periodSeconds": PROBE_PERIOD_S,
                         "failureThreshold": math.ceil(startup_timeout_s / PROBE_PERIOD_S)},
        "readinessProbe": {"httpGet": http_get(), "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"httpGet": http_get(), "periodSeconds": PROBE_PERIOD_S, "failureThreshold": 3},
    }
    if api_key_secret:
        container["env"] = [{"name": "OPSCTL_API_KEY",
                             "valueFrom": {"secretKeyRef": {"name": api_key_secret, "key": "api-key"}}}]
    if resources:
        container["resources"] = resources
    # on SIGTERM the server lets requests finish for --shutdown-timeout; SIGKILL only after
    return workload_manifests(name, container, port=port, managed_by=managed_by, replicas=replicas,
                              termination_grace_s=math.ceil(_shutdown_timeout_s()) + 15)


def workload_manifests(name: str, container: dict, *, port: int, managed_by: str,
                       termination_grace_s: int | None = None, replicas: int = 1) -> list[dict]:
    """A Deployment running `container` (its port named "http") and a Service in front of it."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        raise ValueError(f"{name!r} is not a valid Kubernetes name (lower-case letters, digits and '-'; "
                         f"k8s_name() makes one)")

    # fresh dicts at each use: a shared one is dumped as a YAML anchor and alias (&id001 / *id001)
    def labels():
        return {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": managed_by}
    pod_spec: dict[str, Any] = {"containers": [container]}
    if termination_grace_s is not None:
        pod_spec = {"terminationGracePeriodSeconds": termination_grace_s, **pod_spec}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels()},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {"metadata": {"labels": labels()}, "spec": pod_spec},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels()},
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return [deployment, service]


# -- files --------------------------------------------------------------------------------------
def comment_lines(text: str, width: int = 100, *, wrap: bool = True) -> str:
    """Text as `# ` lines; long lines wrapped between words (never inside a flag) unless wrap=False."""
    out = []
    for line in text.splitlines():
        wrapped = (textwrap.wrap(line, width - 2, subsequent_indent="    ", break_on_hyphens=False,
                                 break_long_words=False) if wrap else [line]) or [""]
        out += [f"# {w}".rstrip() for w in wrapped]
    return "".join(line + "\n" for line in out)


def _tuned_for(model: str, config: EngineConfig, profile_name: str, weights_gib, memory_gib, gpus) -> list[str]:
    facts = [f"profile {profile_name}"]
    if memory_gib is not None:
        facts.append(f"{memory_gib:g} GiB per card" if gpus else f"{memory_gib:g} GiB of host memory")
    if weights_gib is not None:
        facts.append(f"weights {weights_gib:g} GiB")
    return [f"Model: {model}",
            f"Tuned for: {', '.join(facts)}",
            f"Engine settings: {shell_line(config.to_flags()) or 'the defaults'}"]


def _equivalent(title: str, argv: list[str], notes: Iterable[str]) -> str:
    # the command on one line, so that it can be copied and run as it is
    return (comment_lines(title) + comment_lines("  " + shell_line(argv), wrap=False)
            + comment_lines("\n".join(f"  - {note}" for note in notes)))


def cpu_memory_request(config: EngineConfig, weights_gib: float | None, gpus: int) -> float | None:
    """On a CPU pod the weights and the KV cache (cpu_memory_gb x ratio) live in host memory: request
    both. GPU pods hold them on the card; a block count or unknown weights give no figure."""
    if gpus or weights_gib is None or config.cache_is_block_count:
        return None
    return weights_gib + config.cpu_memory_gb * config.cache_max_entry_count


def write_launch_files(out_dir: str | Path, model: str, config: EngineConfig, *, profile_name: str,
                       weights_gib: float | None = None, memory_gib: float | None = None, gpus: int = 1,
                       name: str | None = None, image: str = "opsctl:latest",
                       port: int = DEFAULT_PORT) -> dict[str, Path]:
    """Write launch.sh (executable) and deploy.yaml into out_dir; returns {file name: path}.

    memory_gib is the card's memory (the host's on a CPU profile, gpus=0) and weights_gib the model's
    weights: both feed the vLLM conversion, and on a CPU profile the pod's memory request.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    about = _tuned_for(model, config, profile_name, weights_gib, memory_gib, gpus)
    argv = serve_command(model, config, port=port)
    lmdeploy_argv, lmdeploy_notes = lmdeploy_command(model, config, weights_gib=weights_gib, memory_gib=memory_gib,
                                                     port=port)
    vllm_argv, vllm_notes = vllm_command(model, config, weights_gib=weights_gib, memory_gib=memory_gib, port=port)

    script = "#!/usr/bin/env bash\n" + comment_lines("\n".join([
        "Written by `opsctl tune`: serves the model with the configuration the tune chose.",
        *about,
        "Arguments given to this script are added to `opsctl serve` (a repeated flag takes the last value),",
        "e.g. --server-name 127.0.0.1 or --api-key-file FILE; $OPSCTL_API_KEY is read too.",
    ]))
    script += "set -euo pipefail\n\n"
    script += f"exec {shell_line(argv)} \"$@\"\n\n"
    script += _equivalent("The closest LMDeploy command (not run):", lmdeploy_argv, lmdeploy_notes) + "#\n"
    script += _equivalent("The closest vLLM command (not run):", vllm_argv, vllm_notes)
    launch = out / "launch.sh"
    launch.write_text(script, encoding="utf-8")
    launch.chmod(0o755)

    deploy = out / "deploy.yaml"
    header = "\n".join([
        "Written by `opsctl tune`: a Deployment and a Service serving the chosen configuration.",
        *about,
        f"The model path must exist inside the container ({model}): bake it into the image or mount it.",
    ])
    deploy.write_text(kubernetes_manifests(name or k8s_name(model or "opsctl-default-model"), model, config, image=image, port=port,
                                           gpus=gpus, memory_gib=cpu_memory_request(config, weights_gib, gpus),
                                           header=header), encoding="utf-8")
    return {"launch.sh": launch, "deploy.yaml": deploy}
