"""toolkit/tune/launch.py: the opsctl serve argv rebuilds the same EngineConfig through the real CLI
parser, the LMDeploy/vLLM tables cover every EngineConfig field and drop no setting silently, the
Kubernetes manifests and launch.sh are well formed. Nothing here starts a server."""
from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess

import pytest
import typer.main
import yaml

from engine.config import EngineConfig
from toolkit.cli import app
from toolkit.commands.engine_options import ENGINE_FLAGS
from toolkit.tune import equivalents as E
from toolkit.tune import launch as L

FIELDS = [f.name for f in dataclasses.fields(EngineConfig)]
MODEL = "/models/Qwen2.5-7B-Instruct"


def parse_serve(argv: list[str]):
    """Parse an `opsctl serve ...` argv with the real command's parser, without running it."""
    assert argv[:2] == ["opsctl", "serve"]
    command = typer.main.get_command(app).commands["serve"]
    params = command.make_context("serve", list(argv[2:])).params
    config = EngineConfig(**{name: params[param] for name, param, _, _ in ENGINE_FLAGS})
    return config, params


# One non-default value per field: the round trip and the "nothing dropped" checks use them, and a
# new EngineConfig field without a value here fails test_samples_cover_every_field.
SAMPLES = {
    "tp": 2,
    "nnodes": 2,
    "node_rank": 1,
    "max_batch_size": 48,
    "cache_max_entry_count": 0.55,
    "cache_block_seq_len": 32,
    "session_len": 4096,
    "max_prefill_token_num": 2048,
    "enable_prefix_caching": True,
    "model_format": "awq",
    "quant_policy": 4,
    "w4_kernel": "cuda",
    "w8_kernel": "cuda",
    "lm_head_int8": "off",
    "dtype": "bfloat16",
    "device": "cuda:1",
    "eager_mode": True,
    "deterministic": True,
    "kernels": False,
    "overlap": "on",
    "engine_process": False,
    "gpu_memory_gb": 22.5,
    "cpu_memory_gb": 12.5,
    "seed": 7,
    "debug_invariants": True,
    "debug_step_delay_ms": 5.0,
}

# Fields whose sample differs from the default only beside another setting: --lm-head-int8 off matters (against
# auto's int8 head) with int8 / AWQ weights. ("on", which needs no other setting, cannot go with SAMPLES' deterministic.)
SHOWN_WITH = {"lm_head_int8": {"model_format": "awq"}}

ROUND_TRIP_CONFIGS = [
    EngineConfig(),
    EngineConfig(kernels=False, engine_process=False),  # defaults True turned off: --no-kernels ...
    EngineConfig(cache_max_entry_count=0.85, cpu_memory_gb=12.5, gpu_memory_gb=22.5, device="cpu"),
    EngineConfig(max_batch_size=96, session_len=8192, model_format="gguf"),  # None defaults given a value
    EngineConfig(cache_max_entry_count=512, cache_block_seq_len=16, enable_prefix_caching=True, eager_mode=True,
                 deterministic=True, debug_invariants=True, seed=11, overlap="off", quant_policy=8,
                 dtype="float16", device="cuda:3", max_prefill_token_num=1024),
    EngineConfig(**SAMPLES),
]


def test_samples_cover_every_field():
    assert set(SAMPLES) == set(FIELDS)
    defaults = EngineConfig()
    assert all(SAMPLES[name] != getattr(defaults, name) for name in FIELDS)


@pytest.mark.parametrize("config", ROUND_TRIP_CONFIGS, ids=lambda c: " ".join(c.to_flags()) or "defaults")
def test_serve_argv_parses_back_to_the_same_config(config):
    argv = L.serve_command(MODEL, config, port=8081, extra=["--api-key-file", "/run/keys"])
    parsed, params = parse_serve(argv)
    assert parsed == config
    assert (params["model"], params["server_name"], params["server_port"], params["api_key_file"]) == \
        (MODEL, "0.0.0.0", 8081, "/run/keys")


def test_shell_line_quotes_for_the_shell():
    argv = L.serve_command("/models/my model's dir", EngineConfig(cache_max_entry_count=0.7))
    assert shlex.split(L.shell_line(argv)) == argv


# -- the LMDeploy and vLLM tables ---------------------------------------------------------------
@pytest.mark.parametrize("table", [E.LMDEPLOY_MAP, E.VLLM_MAP], ids=["lmdeploy", "vllm"])
def test_every_engine_config_field_has_a_mapping_entry(table):
    assert list(table) == FIELDS  # one entry per field, in EngineConfig's order


@pytest.mark.parametrize("command", [E.lmdeploy_command, E.vllm_command], ids=["lmdeploy", "vllm"])
@pytest.mark.parametrize("name", FIELDS)
def test_no_setting_is_dropped_silently(command, name):
    """Each non-default value changes the command or adds a note naming the opsctl flag."""
    figures = {"weights_gib": 14.2, "memory_gib": 80.0}
    base = SHOWN_WITH.get(name, {})
    base_argv, base_notes = command(MODEL, EngineConfig(**base), **figures)
    argv, notes = command(MODEL, EngineConfig(**base, **{name: SAMPLES[name]}), **figures)
    assert argv != base_argv or notes != base_notes


def test_a_field_without_an_entry_becomes_a_note():
    @dataclasses.dataclass(frozen=True)
    class Wider(EngineConfig):
        new_knob: int = dataclasses.field(default=3, metadata={"help": "", "flags": (), "choices": None})

    for command in (E.lmdeploy_command, E.vllm_command):
        _, notes = command(MODEL, Wider(new_knob=5))
        assert "--new-knob 5: no translation for this setting yet" in notes


def test_lmdeploy_defaults_and_same_named_flags():
    argv, _ = E.lmdeploy_command(MODEL, EngineConfig())
    assert argv == ["lmdeploy", "serve", "api_server", MODEL, "--server-name", "0.0.0.0", "--server-port", "23333"]
    config = EngineConfig(tp=2, max_batch_size=64, cache_max_entry_count=0.6, cache_block_seq_len=32,
                          session_len=4096, max_prefill_token_num=4096, enable_prefix_caching=True,
                          model_format="awq", quant_policy=8, dtype="float16", eager_mode=True)
    argv, notes = E.lmdeploy_command(MODEL, config)
    assert argv[4:-4] == ["--tp", "2", "--max-batch-size", "64", "--cache-max-entry-count", "0.6",
                          "--cache-block-seq-len", "32", "--session-len", "4096", "--max-prefill-token-num", "4096",
                          "--enable-prefix-caching", "--model-format", "awq", "--quant-policy", "8",
                          "--dtype", "float16", "--eager-mode"]
    assert any(n.startswith("--eager: ") and "PyTorch backend" in n for n in notes)
    assert any(n.startswith("--max-prefill-token-num 4096: ") for n in notes)


@pytest.mark.parametrize("command", [E.lmdeploy_command, E.vllm_command], ids=["lmdeploy", "vllm"])
def test_the_int8_head_is_noted_where_opsctl_would_hold_it(command):
    def head_notes(**settings):
        return [n for n in command(MODEL, EngineConfig(**settings))[1] if n.startswith("--lm-head-int8")]

    assert head_notes() == head_notes(model_format="awq", lm_head_int8="off") == []  # 16-bit weights, or asked off
    assert head_notes(model_format="int8", lm_head_int8="on")[0].startswith("--lm-head-int8 on: ")
    (auto,) = head_notes(model_format="awq")  # the default with AWQ weights: int8 on Hopper
    assert auto.startswith("--lm-head-int8 auto: ") and "Hopper" in auto


def test_lmdeploy_has_no_float32_gguf_or_cpu():
    argv, notes = E.lmdeploy_command(MODEL, EngineConfig(dtype="float32", model_format="gguf", device="cpu"))
    assert "--dtype" not in argv and "--model-format" not in argv and "--device" not in argv
    for flag in ("--dtype float32: ", "--model-format gguf: ", "--device cpu: "):
        assert any(n.startswith(flag) for n in notes), flag


def test_vllm_writes_the_flags_whose_defaults_differ():
    argv, _ = E.vllm_command(MODEL, EngineConfig())
    assert argv[:3] == ["vllm", "serve", MODEL]
    assert "--no-enable-prefix-caching" in argv  # vLLM caches prefixes by default, opsctl does not
    assert argv[argv.index("--block-size") + 1] == "64"  # vLLM's default is 16
    assert argv[argv.index("--max-num-batched-tokens") + 1] == "8192"
    assert argv[argv.index("--seed") + 1] == "0"
    assert argv[-4:] == ["--host", "0.0.0.0", "--port", "23333"]


def test_vllm_equivalents():
    config = EngineConfig(tp=2, max_batch_size=64, session_len=4096, enable_prefix_caching=True, quant_policy=8,
                          dtype="bfloat16", eager_mode=True, deterministic=True, overlap="off", seed=5,
                          device="cuda:2")
    argv, notes = E.vllm_command(MODEL, config)
    assert argv[0] == "env"
    env = argv[1:argv.index("vllm")]
    assert sorted(env) == ["CUDA_VISIBLE_DEVICES=2", "VLLM_BATCH_INVARIANT=1"]
    pairs = {"--tensor-parallel-size": "2", "--max-num-seqs": "64", "--max-model-len": "4096",
             "--kv-cache-dtype": "fp8", "--dtype": "bfloat16", "--seed": "5"}
    for flag, value in pairs.items():
        assert argv[argv.index(flag) + 1] == value, flag
    for flag in ("--enable-prefix-caching", "--enforce-eager", "--no-async-scheduling"):
        assert flag in argv
    assert any(n.startswith("--quant-policy 8: ") and "fp8" in n for n in notes)


def test_vllm_kv_int4_awq_and_block_counts():
    argv, notes = E.vllm_command(MODEL, EngineConfig(quant_policy=4, model_format="awq", cache_max_entry_count=900))
    assert "--kv-cache-dtype" not in argv and "--quantization" not in argv
    assert argv[argv.index("--num-gpu-blocks-override") + 1] == "900"
    assert "--gpu-memory-utilization" not in argv
    assert any(n.startswith("--quant-policy 4: ") for n in notes)
    assert any(n.startswith("--model-format awq: ") for n in notes)


def test_vllm_refuses_a_token_budget_below_the_batch():
    _, notes = E.vllm_command(MODEL, EngineConfig(max_batch_size=256, max_prefill_token_num=128))
    assert any(n.startswith("--max-prefill-token-num 128: ") and "refuses" in n for n in notes)


def test_vllm_on_cpu_sizes_its_cache_in_whole_gib():
    argv, notes = E.vllm_command(MODEL, EngineConfig(device="cpu", cpu_memory_gb=12.5, cache_max_entry_count=0.5))
    assert argv[:2] == ["env", "VLLM_CPU_KVCACHE_SPACE=6"]  # 12.5 x 0.5 = 6.25 GiB, whole GiB
    assert any(n.startswith("--device cpu: ") for n in notes)


# -- the cache-size conversion ------------------------------------------------------------------
def test_gpu_memory_utilization_formula():
    assert E.gpu_memory_utilization(0.8, 14.0, 80.0) == 0.835  # (14 + 0.8 x 66) / 80
    assert E.gpu_memory_utilization(0.8, 14.0, 80.0, tp=2) == 0.817  # W per GPU = 7: 65.4 / 80 = 0.8175
    assert E.gpu_memory_utilization(0.8, 14.0, 80.0, cap_gib=24.0) == 0.275  # (14 + 0.8 x 10) / 80
    assert E.gpu_memory_utilization(0.8, 14.0, 24.0, cap_gib=30.0) == 0.916  # a cap above the card: 22 / 24
    assert E.gpu_memory_utilization(0.8, None, 80.0) is None
    assert E.gpu_memory_utilization(0.8, 14.0, None) is None
    assert E.gpu_memory_utilization(0.8, 90.0, 80.0) is None  # the weights do not fit


@pytest.mark.parametrize("r, w, m", [(0.8, 14.2, 80.0), (0.9, 4.5, 24.0), (0.35, 60.0, 141.0)])
def test_converted_utilization_gives_the_same_kv_memory(r, w, m):
    u = E.gpu_memory_utilization(r, w, m)
    assert u * m - w == pytest.approx(r * (m - w), abs=0.001 * m)
    assert u * m - w <= r * (m - w) + 1e-9  # rounded down: never more than opsctl used


def test_vllm_without_figures_says_the_ratio_was_not_converted():
    argv, notes = E.vllm_command(MODEL, EngineConfig(cache_max_entry_count=0.7))
    assert "--gpu-memory-utilization" not in argv
    assert any(n.startswith("--cache-max-entry-count 0.7: not converted") for n in notes)
    argv, notes = E.vllm_command(MODEL, EngineConfig(cache_max_entry_count=0.7), weights_gib=14.0, memory_gib=80.0)
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.752"  # (14 + 0.7 x 66) / 80 = 0.7525
    assert any("(W + r x (C - W)) / M" in n for n in notes)


def test_a_gpu_memory_cap_is_folded_into_both_cache_sizes():
    config = EngineConfig(cache_max_entry_count=0.85, gpu_memory_gb=24.0)
    argv, notes = E.lmdeploy_command(MODEL, config, weights_gib=14.2, memory_gib=80.0)
    assert argv[argv.index("--cache-max-entry-count") + 1] == "0.126"  # 0.85 x 9.8 / 65.8 = 0.1266
    assert E.capped_cache_ratio(0.85, 14.2, 80.0, cap_gib=24.0) == 0.126
    argv, _ = E.vllm_command(MODEL, config, weights_gib=14.2, memory_gib=80.0)
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.281"  # (14.2 + 0.85 x 9.8) / 80
    # launched on the card it emulated, the cap does not bind: the ratio stays as tuned
    argv, notes = E.lmdeploy_command(MODEL, config, weights_gib=14.2, memory_gib=24.0)
    assert argv[argv.index("--cache-max-entry-count") + 1] == "0.85"
    assert not any(n.startswith("--cache-max-entry-count") for n in notes)


# -- Kubernetes ---------------------------------------------------------------------------------
def _docs(text: str) -> list[dict]:
    return list(yaml.safe_load_all(text))


def _container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("config", ROUND_TRIP_CONFIGS[:3], ids=["defaults", "switches-off", "floats-cpu"])
def test_manifests_run_serve_command_with_health_probes(config):
    text = L.kubernetes_manifests("opsctl-qwen", MODEL, config, port=8000, gpus=1)
    deployment, service = _docs(text)
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    container = _container(deployment)
    assert container["command"] + container["args"] == L.serve_command(MODEL, config, port=8000)
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= L.DEFAULT_STARTUP_TIMEOUT_S
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert service["spec"]["ports"][0]["port"] == 8000 and service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert "&id" not in text  # no YAML anchors: plain manifests


def test_manifests_without_gpus_ask_for_none():
    config = EngineConfig(device="cpu", dtype="float32")
    text = L.kubernetes_manifests("opsctl-cpu", MODEL, config, gpus=0, memory_gib=4.5, cpus=2)
    assert "nvidia.com/gpu" not in text
    container = _container(_docs(text)[0])
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "5Gi"}}
    text = L.kubernetes_manifests("opsctl-gpu", MODEL, EngineConfig(tp=2), gpus=2)
    assert _container(_docs(text)[0])["resources"] == {"limits": {"nvidia.com/gpu": 2}}


def test_manifests_renumber_the_gpu_and_check_their_input():
    container = _container(_docs(L.kubernetes_manifests("x", MODEL, EngineConfig(device="cuda:3")))[0])
    assert container["args"][container["args"].index("--device") + 1] == "cuda"  # the pod sees its GPU as 0
    with pytest.raises(ValueError, match="tp=2"):
        L.kubernetes_manifests("x", MODEL, EngineConfig(tp=2), gpus=1)
    with pytest.raises(ValueError, match="not a valid Kubernetes name"):
        L.kubernetes_manifests("Qwen_7B", MODEL, EngineConfig())
    assert L.k8s_name("/models/Qwen2.5-7B-Instruct/") == "opsctl-qwen2-5-7b-instruct"
    assert len(L.k8s_name("x" * 200)) <= 63


def test_manifests_take_the_api_key_from_a_secret():
    container = _container(_docs(L.kubernetes_manifests("x", MODEL, EngineConfig(), api_key_secret="llm-key"))[0])
    assert container["env"] == [{"name": "OPSCTL_API_KEY",
                                 "valueFrom": {"secretKeyRef": {"name": "llm-key", "key": "api-key"}}}]


# -- launch.sh and deploy.yaml ------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("model, config, gpus", [
    (MODEL, EngineConfig(**SAMPLES), 2),
    ("/models/my model's dir", EngineConfig(device="cpu", dtype="float32", cache_max_entry_count=0.5), 0),
], ids=["gpu", "cpu-quoted-path"])
def test_launch_files(tmp_path, model, config, gpus):
    paths = L.write_launch_files(tmp_path / "launch", model, config, profile_name="h100-sxm", weights_gib=14.2,
                                 memory_gib=80.0, gpus=gpus)
    assert set(paths) == {"launch.sh", "deploy.yaml"}
    script = paths["launch.sh"]
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True).returncode == 0
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines
    assert any("Tuned for: profile h100-sxm" in line for line in lines)
    [run] = [line for line in lines if line.startswith("exec ")]
    assert shlex.split(run) == ["exec", *L.serve_command(model, config), "$@"]
    after = lines[lines.index(run) + 1:]
    assert all(line == "" or line.startswith("#") for line in after)  # the equivalents are comments only
    lmdeploy, _ = E.lmdeploy_command(model, config, weights_gib=14.2, memory_gib=80.0)
    vllm, vllm_notes = E.vllm_command(model, config, weights_gib=14.2, memory_gib=80.0)
    assert "#   " + L.shell_line(lmdeploy) in after and "#   " + L.shell_line(vllm) in after
    assert any(line.startswith("#   - ") for line in after)  # their notes
    deployment, _ = _docs(paths["deploy.yaml"].read_text())
    container = _container(deployment)
    assert container["command"] + container["args"] == L.serve_command(model, L.pod_config(config))
    if gpus:
        assert container["resources"]["limits"] == {"nvidia.com/gpu": gpus}
    else:  # a CPU pod asks for the weights and the KV budget in host memory: 14.2 + 4 x 0.5 GiB
        assert container["resources"] == {"requests": {"memory": "17Gi"}}
