"""`opsctl chat [MODEL]`: interactive terminal chat with streaming and multi-turn history.

Type a message and press Enter. /reset clears the conversation, /system TEXT sets a system prompt,
/exit (or Ctrl-D) quits.
"""
from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from . import engine_options as eo

HELP = "commands: /reset clears the history, /system TEXT sets the system prompt, /exit quits"


# Multi-turn chat resends the history every turn: prefix caching makes that cheap.
@eo.with_engine_flags(enable_prefix_caching=True)
def chat(
    model: eo.ModelArg = None,
    *,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")] = 0.7,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 0.95,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens (0: off).")] = 50,
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply in tokens.")] = 512,
    system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
    engine_config=None,
) -> None:
    """Chat with a model in the terminal (streaming, multi-turn)."""
    from engine import GenerationConfig, Pipeline

    gen = GenerationConfig(do_sample=temperature > 0, temperature=temperature, top_p=top_p, top_k=top_k,
                           max_new_tokens=max_new_tokens)
    pipe = Pipeline(model, engine_config)
    print(f"opsctl chat with {pipe.engine.source.name}. {HELP}", flush=True)
    try:
        run_chat(pipe, gen, system)
    finally:
        pipe.close()  # --tp: the worker processes stop with the chat


def run_chat(pipe, gen, system: str | None, read=input, write=sys.stdout.write) -> None:
    history: list[dict] = []
    while True:
        try:
            line = read("\n>>> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            history.clear()
            write("(history cleared)\n")
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip() or None
            history.clear()
            write(f"(system prompt {'set' if system else 'cleared'}; history cleared)\n")
            continue
        if line.startswith("/"):
            write(f"unknown command {line.split()[0]}; {HELP}\n")
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        reply = []
        try:
            for delta in pipe.stream_infer([messages], gen):
                write(delta.text)
                sys.stdout.flush()
                reply.append(delta.text)
        except KeyboardInterrupt:  # stop this reply, keep the session
            write(" [interrupted]")
        except Exception as e:  # one bad turn (too long a history...) must not end the chat
            from engine import EngineError

            if not isinstance(e, EngineError):
                raise
            history.pop()
            write(f"error: {e}\n")
            continue
        write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})
