"""Prompt preprocessing: chat messages -> the model's chat template -> token ids.

Shared by the pipeline, the chat CLI and the server so a conversation is rendered the same way
everywhere. The template is the tokenizer's own (transformers renders it).
"""
from __future__ import annotations

from .errors import InvalidRequestError

ROLES = ("system", "user", "assistant", "tool", "developer")


def _content_text(content, index: int) -> str:
    """A message's content as text: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequestError(f"messages[{index}].content: only text parts are supported", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise InvalidRequestError(f"messages[{index}].content must be a string or a list of text parts", "messages")


def normalize_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidRequestError(f"messages[{i}] must be an object with role and content", "messages")
        role = m.get("role")
        if role not in ROLES:
            raise InvalidRequestError(f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}", "messages")
        out.append({"role": "system" if role == "developer" else role,
                    "content": _content_text(m.get("content", ""), i)})
    return out


def render_chat(tokenizer, messages, add_generation_prompt: bool = True) -> str:
    messages = normalize_messages(messages)
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidRequestError("this model has no chat template; send a plain prompt instead", "messages")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def chat_token_ids(tokenizer, messages, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation; the template itself writes BOS where the model wants one."""
    text = render_chat(tokenizer, messages, add_generation_prompt)
    return tokenizer(text, add_special_tokens=False).input_ids
