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
