"""`opsctl deploy`: a Dockerfile and Kubernetes manifests for models behind `opsctl proxy`.

    opsctl deploy --from-tune reports/tune-20250101-1200                 # the configuration a tune chose
    opsctl deploy --from-tune chat=reports/run-a --from-tune code=reports/run-b --replicas 2
    opsctl deploy --model qwen=/models/Qwen2.5-7B-Instruct --max-batch-size 128 --enable-prefix-caching

Writes OUT/Dockerfile, OUT/k8s/<model>.yaml (a Deployment and a Service per model: GPUs, /health
probes, the tuned flags, self-registration with the proxy) and OUT/k8s/proxy.yaml (toolkit/deploy/).
Engine flags apply to the --model entries; a tune's entries keep the tuned ones. Bad input is one
`error:` line and exit code 2.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import engine_options as eo


@eo.with_engine_flags()
def deploy(
    *,
    from_tune: Annotated[Optional[list[str]], typer.Option(
        "--from-tune", help="A tune run folder (or its tune.json), optionally NAME=PATH to set the served "
                            "model name; repeat for several models.")] = None,
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", help="NAME=SPEC (SPEC: a model path, preset:NAME, a hub id, or `default` for the embedded "
                        "model), run with the engine flags given here; repeat for several models.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Folder to write (default: the tune run's deploy/ with one --from-tune, else ./deploy).")
    ] = None,
    image: Annotated[str, typer.Option("--image", help="The image the pods run (built from the Dockerfile).")
                     ] = "opsctl:latest",
    replicas: Annotated[int, typer.Option("--replicas", help="Pods per model.")] = 1,
    gpus: Annotated[Optional[int], typer.Option(
        "--gpus", help="nvidia.com/gpu per pod (default: the tensor-parallel width; none with --device cpu or "
                       "a cpu-profile tune).")] = None,
    routing_strategy: Annotated[str, typer.Option(
        "--routing-strategy", help="The proxy's: least_outstanding, round_robin or prefix_affinity.")
    ] = "least_outstanding",
    proxy_port: Annotated[int, typer.Option("--proxy-port", help="The proxy's port.")] = 8000,
    proxy_service_type: Annotated[str, typer.Option(
        "--proxy-service-type", help="ClusterIP, NodePort or LoadBalancer (to reach the proxy from outside).")
    ] = "ClusterIP",
    token_secret: Annotated[str, typer.Option(
        "--token-secret", help="Secret (key `token`) holding the proxy's registration token.")
    ] = "opsctl-proxy-token",
    api_key_secret: Annotated[Optional[str], typer.Option(
        "--api-key-secret", help="Secret (key `api-key`) holding the API key clients must send (the proxy "
                                 "passes it on to the servers). Default: no key.")] = None,
    models_pvc: Annotated[Optional[str], typer.Option(
        "--models-pvc", help="A PersistentVolumeClaim holding the model files, mounted read-only in every "
                             "model pod.")] = None,
    models_mount: Annotated[str, typer.Option("--models-mount", help="Where --models-pvc is mounted.")
                            ] = "/models",
    engine_config=None,
) -> None:
    """Write a Dockerfile and Kubernetes manifests (models + proxy) from a tune run or flags."""
    from rich.console import Console

    from toolkit.deploy.files import write_deploy_files
    from toolkit.deploy.manifests import DeployOptions
    from toolkit.deploy.models import DeployError, model_from_flag, model_from_tune, split_named

    console = Console(width=160)
    try:
        options = DeployOptions(image=image, replicas=replicas, proxy_port=proxy_port,
                                routing_strategy=routing_strategy, proxy_service_type=proxy_service_type,
                                token_secret=token_secret, api_key_secret=api_key_secret, models_pvc=models_pvc,
                                models_mount=models_mount)
        if gpus is not None and gpus < 0:
            raise DeployError(f"--gpus must be >= 0 (got {gpus})")
        models = []
        for value in from_tune or []:
            name, path = split_named(value)
            models.append(model_from_tune(path, name, gpus=gpus))
        models += [model_from_flag(value, engine_config, gpus=gpus) for value in model or []]
        if out is None:
            tunes = from_tune or []
            out = (Path(split_named(tunes[0])[1]) / "deploy" if len(tunes) == 1 and not model
                   else Path("deploy"))
            if out.parent.suffix == ".json":  # --from-tune pointed at the file: its folder
                out = out.parent.parent / "deploy"
        written = write_deploy_files(out, models, options)
    except DeployError as e:
        if os.environ.get("OPSCTL_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None
    for m in models:
        console.print(f"{m.served_name}: {m.spec or 'the embedded default'}, {m.gpus or 'no'} GPU(s), "
                      f"{replicas} replica(s); flags: {' '.join(m.config.to_flags()) or 'defaults'}", markup=False,
                      highlight=False)
    console.print("wrote " + ", ".join(str(p) for p in written.values()), markup=False, highlight=False)
    console.print(f"next: build the image (see {written['Dockerfile']}), create the Secret {token_secret!r} "
                  f"(see {written['k8s/proxy.yaml']}), then kubectl apply -f {out / 'k8s'}", markup=False,
                  highlight=False)
