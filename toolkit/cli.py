"""The `opsctl` command line: the typer root that mounts one module per command.

Users get one clear line for an engine error, never a traceback (set OPSCTL_DEBUG=1 for one).
"""
from __future__ import annotations

import os
import sys

import typer

from .commands import bench as bench_cmd
from .commands import chat as chat_cmd
from .commands import eval as eval_cmd
from .commands import gate as gate_cmd
from .commands import check_env as check_env_cmd
from .commands import deploy as deploy_cmd
from .commands import models as models_cmd
from .commands import plan as plan_cmd
from .commands import profiles as profiles_cmd
from .commands import proxy as proxy_cmd
from .commands import quantize as quantize_cmd
from .commands import report as report_cmd
from .commands import serve as serve_cmd
from .commands import tune as tune_cmd

app = typer.Typer(
    name="opsctl",
    help="Serve, measure and tune LLMs on the GPUs you have.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models_cmd.app, name="models")
app.command("chat")(chat_cmd.chat)
app.add_typer(bench_cmd.app, name="bench")
app.command("serve")(serve_cmd.serve)
app.command("proxy")(proxy_cmd.proxy)
app.add_typer(profiles_cmd.app, name="profiles")
app.command("plan")(plan_cmd.plan)
app.command("check-env")(check_env_cmd.check_env)
app.command("report")(report_cmd.report)
app.command("tune")(tune_cmd.tune)
app.command("deploy")(deploy_cmd.deploy)
app.command("gate")(gate_cmd.gate)
app.add_typer(quantize_cmd.app, name="quantize")
app.add_typer(eval_cmd.app, name="eval")


def main() -> None:
    from engine.errors import EngineError

    from .profiles import ProfileError

    try:
        app()
    except (EngineError, ProfileError) as e:
        if os.environ.get("OPSCTL_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
