"""The README's curl examples (tests/server/curl_examples.sh) run with real curl against the test server."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import MODEL_NAME

EXAMPLES = Path(__file__).with_name("curl_examples.sh")
DEFAULT_URL = "http://127.0.0.1:23333"


def curl_commands() -> list[str]:
    """Each `curl ...` command of the script, continuation lines joined."""
    commands, current = [], None
    for line in EXAMPLES.read_text().splitlines():
        if current is None and line.startswith("curl "):
            current = line
        elif current is not None:
            current += "\n" + line
        else:
            continue
        if not line.endswith("\\"):
            commands.append(current)
            current = None
    return commands


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_examples(server):
    commands = curl_commands()
    assert len(commands) == 4
    outputs = []
    for command in commands:
        assert DEFAULT_URL in command
        done = subprocess.run(["bash", "-c", command.replace(DEFAULT_URL, server.url) + " --silent --show-error"
                               " --fail-with-body"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        outputs.append(done.stdout)
    models, chat, stream, completion = outputs
    assert json.loads(models)["data"][0]["id"] == MODEL_NAME
    assert json.loads(chat)["choices"][0]["message"]["content"] == "The capital of France is Paris."
    events = [line[len("data: "):] for line in stream.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    body = json.loads(completion)
    assert body["choices"][0]["text"] and body["usage"]["completion_tokens"] <= 32
