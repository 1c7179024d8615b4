"""Kubernetes manifests of a deployment: a Deployment + Service per model, and the proxy in front.

Each model's pods run `opsctl serve` as the tune's deploy.yaml does (toolkit/tune/launch.py renders
the Deployment and Service; this module adds to them): the tuned engine flags, GPUs as
`nvidia.com/gpu` limits, startup/readiness/liveness probes on /health, plus `--model-name` and
self-registration with the proxy (`--proxy-url http://opsctl-proxy:PORT --advertise-url
http://$(POD_IP):PORT`, the pod's own address from the downward API, and the shared token from a
Secret). The proxy is one Deployment (`opsctl proxy`, probes on its /health) and a Service, the one
endpoint clients use. Kubernetes is how this scales past one machine: `--replicas` per model, and
pods on any node register themselves.

One proxy replica: each proxy keeps its own registry, and servers re-register every 15 s, so a
restarted proxy knows every server again within one period.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..proxy.settings import DEFAULT_PORT as PROXY_PORT
from ..proxy.settings import TOKEN_ENV, UPSTREAM_KEY_ENV
from ..proxy.strategies import make_strategy
from ..tune.equivalents import DEFAULT_PORT
from ..tune.launch import HEALTH_PATH, serve_manifests, workload_manifests
from .models import PROXY_NAME, DeployError, ModelDeployment

MANAGED_BY = "opsctl-deploy"
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
PROXY_SHUTDOWN_S = 30  # `opsctl proxy --shutdown-timeout`: streams get this long after SIGTERM


@dataclass(frozen=True)
class DeployOptions:
    image: str = "opsctl:latest"
    replicas: int = 1
    port: int = DEFAULT_PORT  # each model server's
    proxy_port: int = PROXY_PORT
    routing_strategy: str = "least_outstanding"
    proxy_service_type: str = "ClusterIP"
    token_secret: str = "opsctl-proxy-token"  # a Secret with key `token`: the registration token
    api_key_secret: str | None = None  # a Secret with key `api-key`: clients' key, also sent by the proxy to servers
    models_pvc: str | None = None  # a PersistentVolumeClaim holding the models, mounted read-only
    models_mount: str = "/models"

    def __post_init__(self):
        if self.replicas < 1:
            raise DeployError(f"--replicas must be at least 1 (got {self.replicas})")
        if self.proxy_service_type not in SERVICE_TYPES:
            raise DeployError(f"--proxy-service-type {self.proxy_service_type!r} is not one of "
                              f"{', '.join(SERVICE_TYPES)}")
        try:
            make_strategy(self.routing_strategy)
        except ValueError as e:
            raise DeployError(str(e)) from None
        for flag, port in (("--port", self.port), ("--proxy-port", self.proxy_port)):
            if not 1 <= port <= 65535:
                raise DeployError(f"{flag} {port} is not a port number (1-65535)")
        if not self.models_mount.startswith("/"):
            raise DeployError(f"--models-mount {self.models_mount!r} must be an absolute path")

    @property
    def proxy_url(self) -> str:
        return f"http://{PROXY_NAME}:{self.proxy_port}"


def _secret_env(name: str, secret: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _containers(deployment: dict) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


def model_manifests(model: ModelDeployment, options: DeployOptions) -> list[dict]:
    """The model's Deployment (options.replicas pods) and Service."""
    extra = ["--model-name", model.served_name, "--proxy-url", options.proxy_url,
             # $(POD_IP) is expanded by Kubernetes from the container's env (below)
             "--advertise-url", f"http://$(POD_IP):{options.port}"]
    try:
        deployment, service = serve_manifests(model.k8s_name, model.spec, model.config, image=options.image,
                                              port=options.port, gpus=model.gpus, memory_gib=model.memory_gib,
                                              api_key_secret=options.api_key_secret, extra=extra,
                                              managed_by=MANAGED_BY, replicas=options.replicas)
    except ValueError as e:
        raise DeployError(f"model {model.served_name!r}: {e}") from None
    container = _containers(deployment)[0]
    container["env"] = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        _secret_env(TOKEN_ENV, options.token_secret, "token"), *container.get("env", [])]
    if options.models_pvc:
        pod = deployment["spec"]["template"]["spec"]
        pod["volumes"] = [{"name": "models", "persistentVolumeClaim": {"claimName": options.models_pvc,
                                                                       "readOnly": True}}]
        container["volumeMounts"] = [{"name": "models", "mountPath": options.models_mount, "readOnly": True}]
    return [deployment, service]


def proxy_manifests(options: DeployOptions) -> list[dict]:
    """The proxy's Deployment (one replica) and its Service, the clients' endpoint."""
    def http_get():
        return {"path": HEALTH_PATH, "port": "http"}
    env = [_secret_env(TOKEN_ENV, options.token_secret, "token")]
    if options.api_key_secret:
        # clients must send the key; the proxy sends the same key on to the servers, which want it too
        env += [_secret_env("OPSCTL_API_KEY", options.api_key_secret, "api-key"),
                _secret_env(UPSTREAM_KEY_ENV, options.api_key_secret, "api-key")]
    container: dict[str, Any] = {
        "name": "opsctl-proxy",
        "image": options.image,
        "command": ["opsctl"],
        "args": ["proxy", "--server-name", "0.0.0.0", "--server-port", str(options.proxy_port),
                 "--routing-strategy", options.routing_strategy, "--shutdown-timeout", str(PROXY_SHUTDOWN_S)],
        "ports": [{"name": "http", "containerPort": options.proxy_port, "protocol": "TCP"}],
        "env": env,
        # its /health answers as soon as it listens (a few seconds: the Python imports), whatever the servers do
        "startupProbe": {"httpGet": http_get(), "periodSeconds": 2, "failureThreshold": 30},
        "readinessProbe": {"httpGet": http_get(), "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"httpGet": http_get(), "periodSeconds": 10, "failureThreshold": 3},
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
    }
    deployment, service = workload_manifests(PROXY_NAME, container, port=options.proxy_port, managed_by=MANAGED_BY,
                                             termination_grace_s=math.ceil(PROXY_SHUTDOWN_S) + 5)
    if options.proxy_service_type != "ClusterIP":
        service["spec"]["type"] = options.proxy_service_type
    return [deployment, service]
