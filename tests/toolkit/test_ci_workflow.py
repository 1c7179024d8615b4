"""The CI files a team copies: ci/github-workflow.yml, .ci/run and ci/cpu_gate.sh stay consistent with
the repository (scripts and baselines they name exist, the commands they run are opsctl's, the gate
step runs after the tests)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.gate import load_gates, load_result

REPO = Path(__file__).resolve().parents[2]


def _workflow() -> dict:
    return yaml.safe_load((REPO / "ci" / "github-workflow.yml").read_text())


def _runs(job: dict) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def test_workflow_has_a_cpu_and_a_gpu_job_in_order():
    flow = _workflow()
    # PyYAML reads the bare key `on` as True (YAML 1.1); GitHub reads it as the trigger list.
    triggers = flow.get("on", flow.get(True))
    assert set(triggers) == {"push", "pull_request"}
    cpu, gpu = flow["jobs"]["cpu"], flow["jobs"]["gpu"]
    assert gpu["runs-on"] == ["self-hosted", "gpu"]
    cpu_runs = _runs(cpu)
    tests = next(i for i, r in enumerate(cpu_runs) if r.strip() == "make test")
    gate = next(i for i, r in enumerate(cpu_runs) if "ci/cpu_gate.sh" in r)
    assert tests < gate  # the gate judges a tree whose tests passed
    assert any("opsctl gate" in r for r in _runs(gpu))
    benchmark = next(s for s in cpu["steps"] if str(s.get("uses", "")).startswith("benchmark-action/"))
    assert benchmark["with"]["tool"] == "customBiggerIsBetter"


def test_every_script_and_opsctl_command_the_ci_files_run_exists():
    texts = ["\n".join(_runs(job)) for job in _workflow()["jobs"].values()]
    texts += [(REPO / ".ci" / "run").read_text(), (REPO / "ci" / "cpu_gate.sh").read_text()]
    scripts = {m for t in texts for m in re.findall(r"\bci/[\w./-]+\.sh\b", t)}
    assert scripts and all((REPO / s).is_file() for s in scripts), scripts
    commands = set()
    for text in texts:
        for line in text.splitlines():
            m = re.search(r"opsctl\"? (\w+)(?: (offline|url))?", line)
            if m and not line.lstrip().startswith("#"):
                commands.add(" ".join(filter(None, m.groups())))
    assert {"gate", "bench offline"} <= commands
    for command in commands:
        assert CliRunner().invoke(app, [*command.split(), "--help"]).exit_code == 0, command


def test_ci_run_gates_after_the_readme_test_command():
    lines = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert "make test" in lines
    gate = next(i for i, ln in enumerate(lines) if "ci/cpu_gate.sh" in ln)
    assert lines.index("make test") < gate


def test_gate_script_uses_the_committed_gates_and_cpu_baseline():
    script = (REPO / "ci" / "cpu_gate.sh").read_text()
    words = shlex.split(" ".join(ln for ln in script.splitlines() if not ln.lstrip().startswith("#")
                                 and "gate" in ln and "--baseline" in ln).replace("\\", " "))
    baseline = REPO / words[words.index("--baseline") + 1]
    gates = REPO / words[words.index("--gates") + 1]
    spec, base = load_gates(gates), load_result(baseline, "baseline")
    assert base.device.get("kind") == "cpu" and base.device.get("cpu_model")
    engine = next(r for r in base.runs if r.target == "engine")
    assert engine.workload["name"] == "mixed"
    # the script's bench asks for the baseline's workload (the gate refuses another one, exit 2)
    code = "\n".join(ln for ln in script.splitlines() if not ln.lstrip().startswith("#")).replace("\\\n", " ")
    bench = shlex.split(code[code.index("bench offline"):].split(">")[0])
    assert bench[bench.index("--workload") + 1] == engine.workload["name"]
    assert [int(v) for v in bench[bench.index("--output-len") + 1].split(":")] == engine.workload["output_len"]
    assert any(r.target == "transformers-generate" for r in base.runs)
    assert any(g.kind == "ratio_to_peer" for g in spec.gates)  # judged on any CI machine


def test_gpu_baseline_matches_its_gates():
    """The committed GPU baseline is one the gates can judge: a CUDA result with the engine and its peer."""
    from toolkit.gate import device_class

    baselines = sorted((REPO / "ci" / "baselines").glob("nvidia-*.json"))
    assert baselines, "no GPU baseline committed"
    spec = load_gates(REPO / "ci" / "gates.yaml")
    for path in baselines:
        base = load_result(path, "baseline")
        assert path.name.startswith(device_class(base) + "-")  # the name the workflow looks it up by
        assert any(g.device_class and re.fullmatch(g.device_class.replace("*", ".*"), device_class(base))
                   for g in spec.gates)
        assert {r.target for r in base.runs} >= {"engine", "transformers-generate"}
