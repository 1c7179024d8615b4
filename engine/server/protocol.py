"""OpenAI request and response shapes (pydantic), as the official client sends and reads them.

Requests are strict about types (a string where a number belongs is a 400 naming the field, never a
silent coercion) and ignore fields they do not know, as OpenAI does. Value ranges are checked in
`serving` and by GenerationConfig, so every message names the OpenAI parameter. Streaming chunks
are built as plain dicts in `serving` (pydantic costs ~20 us a chunk, the hot path of a stream);
the models here describe them and serve the non-streaming responses.
"""
from __future__ import annotations

import time
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- errors ----------------------------------------------------------------------------------------
class ErrorInfo(_Response):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(_Response):
    error: ErrorInfo


class APIError(Exception):
    """An error the server answers in OpenAI's shape: {"error": {message, type, param, code}}."""

    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
             405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
             415: "invalid_request_error", 429: "rate_limit_error", 499: "invalid_request_error",
             500: "server_error", 503: "service_unavailable"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or self.TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    @classmethod
    def for_route(cls, method: str, path: str, status: int, detail, not_found_hint: str) -> "APIError":
        """Starlette's routing errors (404 no route, 405 wrong method, ...) in OpenAI's shape, in words."""
        if status == 404:
            return cls(status, f"no route {method} {path}{not_found_hint}")
        if status == 405:
            return cls(status, f"method {method} is not allowed on {path}")
        return cls(status, str(detail))


# -- requests --------------------------------------------------------------------------------------
class StreamOptions(_Request):
    include_usage: Optional[bool] = False


class _SamplingFields(_Request):
    """Fields chat and text completions share (OpenAI's, plus vLLM's and LMDeploy's extensions)."""

    model: Optional[str] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None  # extension: 0 or -1 turn it off (the default, as in OpenAI)
    min_p: Optional[float] = None
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    stop_token_ids: Optional[list[int]] = None
    n: Optional[int] = 1
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    repetition_penalty: Optional[float] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    ignore_eos: Optional[bool] = False
    skip_special_tokens: Optional[bool] = True
    include_stop_str_in_output: Optional[bool] = False
    min_tokens: Optional[int] = 0
    user: Optional[str] = None
    # vLLM's extension: requests share prefix-cache blocks only with requests of the same salt, so a
    # tenant cannot probe another's prompts by timing cache hits.
    cache_salt: Optional[str] = None


class ChatCompletionRequest(_SamplingFields):
    # Roles and content are checked by engine.prompt (one message naming the bad entry).
    messages: list[Any]
    max_completion_tokens: Optional[int] = None
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = None


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[int] = 16  # OpenAI's (and LMDeploy's, vLLM's) default for text completions
    logprobs: Optional[int] = None
    echo: Optional[bool] = False
    suffix: Optional[str] = None
    best_of: Optional[int] = None


class TokenizeRequest(_Request):
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[Any]] = None
    add_special_tokens: Optional[bool] = True
    add_generation_prompt: Optional[bool] = True


class DetokenizeRequest(_Request):
    model: Optional[str] = None
    tokens: list[int]


# -- responses -------------------------------------------------------------------------------------
class PromptTokensDetails(_Response):
    cached_tokens: int = 0


class Usage(_Response):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: Optional[PromptTokensDetails] = None


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "opsctl"
    root: Optional[str] = None
    max_model_len: Optional[int] = None


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ChatMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(_Response):
    index: int
    message: ChatMessage
    logprobs: Optional[dict[str, Any]] = None  # {"content": [{token, logprob, bytes, top_logprobs}]}
    finish_reason: Optional[str] = None


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    system_fingerprint: Optional[str] = None


class CompletionChoice(_Response):
    index: int
    text: str
    logprobs: Optional[dict[str, Any]] = None  # {tokens, token_logprobs, top_logprobs, text_offset}
    finish_reason: Optional[str] = None


class CompletionResponse(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: Optional[str] = None


class TokenizeResponse(_Response):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(_Response):
    prompt: str
