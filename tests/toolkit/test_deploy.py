"""`opsctl deploy`: the files it writes from a tune run and from flags, every manifest validated offline
against the Kubernetes schemas (kubernetes-validate bundles them), the pods' command lines parsed back
by the real `opsctl serve` and `opsctl proxy` parsers, and bad input refused in one line."""
from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from engine.config import EngineConfig
from toolkit.cli import app
from toolkit.commands.engine_options import ENGINE_FLAGS
from toolkit.deploy.models import DeployError, model_from_tune, served_name, split_named
from toolkit.tune.schema import Prediction, Slo, Trial, TuneResult, TuneWorkload

K8S_VERSION = kubernetes_validate.latest_version()  # the newest schemas the package carries, all local files
EXAMPLE_TUNE = "reports/examples/tune-h200"


def _validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # strict: unknown fields are errors too


def _docs(path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _deploy(*args: str):
    result = CliRunner().invoke(app, ["deploy", *args])
    return result.exit_code, result.output


def _command(name: str):
    return typer.main.get_command(app).commands[name]


def _parse(name: str, argv: list[str]) -> dict:
    """The params `opsctl <name>` would run with for this argv (its real parser, nothing run)."""
    return _command(name).make_context(name, list(argv)).params


def _tune(tmp_path, *, flags: list[str], engine: dict, profile: str = "h100-sxm", emulated: bool = False,
          chosen: bool = True, model_spec: str | None = "/models/Qwen2.5-7B-Instruct", weights_gib: float = 14.2):
    trial = Trial(trial_id="t02", weight_format="bf16", engine=engine, flags=flags,
                  predicted=Prediction(weights_gib=weights_gib))
    result = TuneResult(run_id="tune-x", model=model_spec or "SmolLM2-135M-Instruct", model_spec=model_spec,
                        target_profile=profile, emulated=emulated,
                        workload=TuneWorkload(name="chat", input_len=512, output_len=256),
                        slo=Slo(ttft_ms=200, tpot_ms=50), trials=[trial], chosen="t02" if chosen else None)
    run = tmp_path / "tune-x"
    run.mkdir()
    result.write(run / "tune.json")
    return run


def _by_kind(docs: list[dict]) -> dict:
    return {d["kind"]: d for d in docs}


def test_validation_is_real():
    """The schemas catch a wrong type and an unknown field: the checks below can fail."""
    good = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
            "spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}}
    _validate(good)
    for broken in ({"ports": [{"port": "eighty"}]}, {"ports": [{"port": 80}], "selectr": {}}):
        doc = copy.deepcopy(good)
        doc["spec"] = broken
        with pytest.raises(kubernetes_validate.ValidationError):
            _validate(doc)


def test_deploy_from_a_tune_run(tmp_path):
    run = _tune(tmp_path, flags=["--max-batch-size", "128", "--enable-prefix-caching", "--gpu-memory-gb", "24"],
                engine={"max_batch_size": 128, "enable_prefix_caching": True}, emulated=True)
    code, output = _deploy("--from-tune", f"qwen={run}", "--replicas", "3", "--routing-strategy", "prefix_affinity")
    assert code == 0, output
    out = run / "deploy"  # a tune's deployment lands in its run folder
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["Dockerfile", "k8s/proxy.yaml", "k8s/qwen.yaml"]
    docs = _docs(out / "k8s/qwen.yaml")
    for doc in docs + _docs(out / "k8s/proxy.yaml"):
        _validate(doc)
    model = _by_kind(docs)
    deployment, service = model["Deployment"], model["Service"]
    assert deployment["metadata"]["name"] == "opsctl-qwen" and deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    argv = [a.replace("$(POD_IP)", "10.1.2.3") for a in container["args"]]
    assert container["command"] == ["opsctl"] and argv[0] == "serve"
    params = _parse("serve", argv[1:])
    config = EngineConfig(**{name: params[param] for name, param, _, _ in ENGINE_FLAGS})
    # the tuned flags, without the cap that emulated the 24 GiB card on a bigger one
    assert config == EngineConfig(max_batch_size=128, enable_prefix_caching=True)
    assert (params["model"], params["model_name"], params["server_name"]) == \
        ("/models/Qwen2.5-7B-Instruct", "qwen", "0.0.0.0")
    assert params["proxy_url"] == "http://opsctl-proxy:8000"
    assert params["advertise_url"] == f"http://10.1.2.3:{params['server_port']}"
    env = {e["name"]: e["valueFrom"] for e in container["env"]}
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["OPSCTL_PROXY_TOKEN"] == {"secretKeyRef": {"name": "opsctl-proxy-token", "key": "token"}}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"

    proxy = _by_kind(_docs(out / "k8s/proxy.yaml"))
    pc = proxy["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert pc["command"] == ["opsctl"] and pc["args"][0] == "proxy"
    pparams = _parse("proxy", pc["args"][1:])
    assert (pparams["server_name"], pparams["server_port"], pparams["routing_strategy"]) == \
        ("0.0.0.0", 8000, "prefix_affinity")
    assert pc["readinessProbe"]["httpGet"]["path"] == "/health" and "nvidia.com/gpu" not in str(pc)
    assert proxy["Service"]["metadata"]["name"] == "opsctl-proxy"
    assert proxy["Service"]["spec"]["ports"][0]["port"] == 8000
    dockerfile = (out / "Dockerfile").read_text()
    assert dockerfile.splitlines()[4].startswith("FROM ") and "RUN pip install ." in dockerfile
    assert "whl/cpu" not in dockerfile and "opsctl models pull" not in dockerfile  # GPU torch; no default model
    assert "USER 10001" in dockerfile


def test_deploy_from_the_committed_example_tune(tmp_path):
    code, output = _deploy("--from-tune", EXAMPLE_TUNE, "--out", str(tmp_path / "d"))
    assert code == 0, output
    for path in (tmp_path / "d/k8s").glob("*.yaml"):
        for doc in _docs(path):
            _validate(doc)
    assert "preset:qwen2.5-7b" in output


def test_a_cpu_profile_tune_asks_for_memory_not_gpus(tmp_path):
    run = _tune(tmp_path, flags=["--device", "cpu", "--dtype", "float32", "--cache-max-entry-count", "0.5"],
                engine={"cache_max_entry_count": 0.5}, profile="cpu", model_spec=None, weights_gib=0.5)
    model = model_from_tune(run)
    assert (model.served_name, model.spec, model.gpus) == ("SmolLM2-135M-Instruct", None, 0)
    assert model.config == EngineConfig(device="cpu", dtype="float32", cache_max_entry_count=0.5)
    code, output = _deploy("--from-tune", str(run / "tune.json"), "--out", str(tmp_path / "d"))
    assert code == 0, output
    deployment = _by_kind(_docs(tmp_path / "d/k8s/smollm2-135m-instruct.yaml"))["Deployment"]
    _validate(deployment)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # the weights and the KV budget in host memory: 0.5 + 4 GiB x 0.5, rounded up
    assert container["resources"] == {"requests": {"memory": "3Gi"}}
    dockerfile = (tmp_path / "d/Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in dockerfile and "RUN opsctl models pull" in dockerfile


def test_deploy_from_flags_several_models(tmp_path):
    code, output = _deploy("--model", "chat=default", "--model", "preset:qwen3-0.6b", "--tp", "2",
                           "--max-batch-size", "64", "--api-key-secret", "llm-key", "--models-pvc", "models",
                           "--proxy-service-type", "LoadBalancer", "--image", "registry.local/opsctl:1",
                           "--out", str(tmp_path / "d"))
    assert code == 0, output
    k8s = tmp_path / "d/k8s"
    assert sorted(p.name for p in k8s.iterdir()) == ["chat.yaml", "preset-qwen3-0-6b.yaml", "proxy.yaml"]
    for path in k8s.iterdir():
        for doc in _docs(path):
            _validate(doc)
    preset = _by_kind(_docs(k8s / "preset-qwen3-0-6b.yaml"))["Deployment"]["spec"]["template"]["spec"]
    container = preset["containers"][0]
    assert container["image"] == "registry.local/opsctl:1"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 2}  # the tensor-parallel width
    params = _parse("serve", [a.replace("$(POD_IP)", "10.0.0.1") for a in container["args"][1:]])
    assert (params["model"], params["model_name"], params["tp"], params["max_batch_size"]) == \
        ("preset:qwen3-0.6b", "preset:qwen3-0.6b", 2, 64)
    assert {"name": "OPSCTL_API_KEY", "valueFrom": {"secretKeyRef": {"name": "llm-key", "key": "api-key"}}} \
        in container["env"]
    assert preset["volumes"][0]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert container["volumeMounts"] == [{"name": "models", "mountPath": "/models", "readOnly": True}]
    proxy = _by_kind(_docs(k8s / "proxy.yaml"))
    assert proxy["Service"]["spec"]["type"] == "LoadBalancer"
    env = {e["name"] for e in proxy["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env == {"OPSCTL_PROXY_TOKEN", "OPSCTL_API_KEY", "OPSCTL_UPSTREAM_API_KEY"}


@pytest.mark.parametrize("args, message", [
    ([], "nothing to deploy"),
    (["--model", "a=default", "--model", "a=preset:qwen3-0.6b"], "would be deployed as 'opsctl-a'"),
    (["--model", "proxy=default"], "the name of the proxy"),
    (["--from-tune", "/nonexistent/run"], "no tune.json there"),
    (["--model", "x=default", "--replicas", "0"], "--replicas must be at least 1"),
    (["--model", "x=default", "--routing-strategy", "random"], "--routing-strategy 'random'"),
    (["--model", "x=default", "--device", "cpu", "--gpus", "1"], "a CPU pod asks for no GPU"),
    (["--model", "x=default", "--proxy-service-type", "Ingress"], "--proxy-service-type"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    code, output = _deploy(*args, "--out", str(tmp_path / "d"))
    assert code == 2 and message in output, output
    assert len(output.strip().splitlines()) == 1 and output.startswith("error: ")
    assert not (tmp_path / "d").exists()


def test_a_tune_that_chose_nothing_is_refused(tmp_path):
    run = _tune(tmp_path, flags=[], engine={}, chosen=False)
    with pytest.raises(DeployError, match="chose no configuration"):
        model_from_tune(run)


def test_served_names_match_what_serve_would_serve():
    assert served_name(None) == served_name("default") == "SmolLM2-135M-Instruct"
    assert served_name("/models/Qwen2.5-7B-Instruct/") == "Qwen2.5-7B-Instruct"
    assert served_name("/models/qwen2.5-7b-q4_k_m.gguf") == "qwen2.5-7b-q4_k_m"
    assert served_name("preset:llama3-8b") == "preset:llama3-8b"
    assert served_name("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    assert split_named("chat=/models/x") == ("chat", "/models/x")
    assert split_named("/models/a=b") == (None, "/models/a=b")
    assert split_named("preset:x") == (None, "preset:x")
