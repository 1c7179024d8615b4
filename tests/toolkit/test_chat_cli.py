"""`opsctl chat`: a real subprocess driven through stdin, streaming replies with history."""
from __future__ import annotations

import subprocess
import sys


def test_chat_session_with_history_reset_and_exit(default_model_dir):
    script = "\n".join([
        "What is the capital of France?",
        "/reset",
        "/bogus",
        "/exit",
    ]) + "\n"
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit", "chat", default_model_dir, "--temperature", "0", "--max-new-tokens", "24",
         "--device", "cpu", "--cache-max-entry-count", "64", "--cache-block-seq-len", "16", "--session-len", "1024"],
        input=script, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "The capital of France is Paris." in proc.stdout
    assert "(history cleared)" in proc.stdout
    assert "unknown command /bogus" in proc.stdout


def test_chat_with_unknown_model_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "toolkit", "chat", "/no/such/model"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: model not found")
