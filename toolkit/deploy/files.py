"""Writing a deployment folder: Dockerfile, k8s/<model>.yaml per model, k8s/proxy.yaml.

Each manifest file starts with comment lines saying where its settings came from and what to do
before `kubectl apply -f k8s/` (the Secret with the registration token, the model files inside the
pods). Existing files of the same names are replaced; nothing else in the folder is touched.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..tune.launch import comment_lines, dump_manifests, shell_line
from .dockerfile import render_dockerfile
from .manifests import DeployOptions, model_manifests, proxy_manifests
from .models import DeployError, ModelDeployment, check_unique


def _model_header(model: ModelDeployment, options: DeployOptions) -> str:
    lines = [f"Written by `opsctl deploy`: model {model.served_name!r} ({options.replicas} replica(s), "
             f"{model.gpus or 'no'} GPU(s) each) behind {options.proxy_url}.",
             f"From: {model.source}",
             f"Engine settings: {shell_line(model.config.to_flags()) or 'the defaults'}"]
    if model.spec is None:
        lines.append("Model: the embedded default, baked into the image by the Dockerfile.")
    elif model.spec.startswith("preset:"):
        lines.append(f"Model: {model.spec} (random weights of a real architecture: for speed work only).")
    elif options.models_pvc:
        lines.append(f"Model: {model.spec} must exist inside the pod; the PVC {options.models_pvc!r} is "
                     f"mounted at {options.models_mount}.")
    else:
        lines.append(f"Model: {model.spec} must exist inside the container: bake it into the image or mount it "
                     "(opsctl deploy --models-pvc NAME).")
    return "\n".join(lines)


def _proxy_header(options: DeployOptions) -> str:
    lines = ["Written by `opsctl deploy`: the proxy, the one endpoint clients use "
             f"(http://opsctl-proxy:{options.proxy_port}/v1 inside the cluster).",
             f"Routing: {options.routing_strategy}. Servers register themselves with the token of the Secret "
             f"{options.token_secret!r} (key `token`); create it once:",
             f"  kubectl create secret generic {options.token_secret} --from-literal=token=$(openssl rand -hex 32)"]
    if options.api_key_secret:
        lines += [f"Clients need the API key of the Secret {options.api_key_secret!r} (key `api-key`):",
                  f"  kubectl create secret generic {options.api_key_secret} --from-literal=api-key=sk-..."]
    return "\n".join(lines)


def write_deploy_files(out_dir: str | os.PathLike, models: Sequence[ModelDeployment],
                       options: DeployOptions) -> dict[str, Path]:
    """Write the folder; returns {relative file name: path}. DeployError for clashing names."""
    if not models:
        raise DeployError("nothing to deploy: give --from-tune RUN or --model NAME=SPEC")
    models = list(models)
    check_unique(models)
    out = Path(out_dir)
    k8s = out / "k8s"
    k8s.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    docs = {f"k8s/{m.k8s_name.removeprefix('opsctl-')}.yaml": (_model_header(m, options), model_manifests(m, options))
            for m in models}
    docs["k8s/proxy.yaml"] = (_proxy_header(options), proxy_manifests(options))
    for name, (header, manifests) in docs.items():
        path = out / name
        path.write_text(comment_lines(header) + dump_manifests(manifests), encoding="utf-8")
        written[name] = path
    dockerfile = out / "Dockerfile"
    try:
        shown = os.path.relpath(dockerfile)
    except ValueError:  # another drive (Windows)
        shown = str(dockerfile)
    dockerfile.write_text(render_dockerfile(models, dockerfile_path=shown), encoding="utf-8")
    written["Dockerfile"] = dockerfile
    return written
