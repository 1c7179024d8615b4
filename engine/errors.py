"""Exceptions the engine raises to its callers.

Each carries one clear message naming what was wrong; the server maps them to OpenAI error bodies
(InvalidRequestError -> 400 with `param`, ModelLoadError -> start-up failure line).
"""


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidRequestError(EngineError, ValueError):
    """A request (prompt or generation parameter) the engine refuses; nothing else is affected."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class ModelLoadError(EngineError):
    """The model could not be found, read or built."""


class OutOfMemoryError(EngineError):
    """The model or the KV cache does not fit the device; the message says what would."""


class EngineDeadError(EngineError):
    """The engine stopped: `code` is "shutting_down" (the server is stopping) or "engine_dead" (it died:
    its process, or a tensor-parallel worker, is gone). Not a per-request failure: nothing more runs."""

    def __init__(self, message: str, code: str = "engine_dead"):
        super().__init__(message)
        self.code = code


def error_from_name(kind: str, text: str, param: str | None = None) -> EngineError:
    """An error another process raised, rebuilt from its class name (EngineError for a name not here)."""
    if kind == "InvalidRequestError":
        return InvalidRequestError(text, param)
    cls = globals().get(kind)
    return cls(text) if isinstance(cls, type) and issubclass(cls, EngineError) else EngineError(text)


def first_line(error: BaseException) -> str:
    """An exception's message as one line: its first line, joined with the second when the first only
    announces it ("Validation error for field 'x':"), or its type name when it has no message. No final
    full stop: callers go on with ": what to do"."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}".rstrip(".")
    return lines[0].rstrip(".")


def describe_load_failure(what: str, error: Exception) -> str:
    """One line for an unexpected failure while building an engine for `what` (a model name).

    Engine errors already say what would fit; anything else (a CUDA out-of-memory, a broken weight
    file) gets its type, its first line and, for memory, the settings that would help.
    """
    if isinstance(error, EngineError):
        return str(error)
    text = str(error).strip()
    if "out of memory" in text.lower():
        return (f"out of memory while loading {what}: lower --cache-max-entry-count or --session-len, "
                "or use a 4-bit AWQ checkpoint")
    first = text.splitlines()[0] if text else type(error).__name__
    return f"cannot load {what}: {type(error).__name__}: {first}"
