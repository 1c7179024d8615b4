"""Child processes that a test stops with Ctrl-C (SIGINT) get SIGINT's default action back, whatever the test
run inherited: a shell starts a background job (`cmd &` without job control) with SIGINT ignored, an ignored
signal stays ignored across exec, and Python then installs no KeyboardInterrupt handler, so the child would
run on through the test's Ctrl-C."""
from __future__ import annotations

import signal


def default_sigint() -> None:
    """subprocess.Popen's preexec_fn: SIGINT back to SIG_DFL in the child before it execs."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
