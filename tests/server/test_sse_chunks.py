"""The pre-rendered SSE text chunk is byte for byte what the general chunk renderer writes."""
from __future__ import annotations

import json

import pytest

from engine.server.sse import _sse, _TextChunk

TEXTS = ["", "hello", ' "quoted" \\ back', "line\nbreak\ttab\x00\x1f", "\u2028\u2029", "北京的历史", "emoji 🚀",
         "</script>", "a" * 1000]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("index", [0, 7, 127])
def test_text_chunk_equals_the_general_renderer(text, index):
    head = {"id": "cmpl-" + "f" * 32, "object": "text_completion", "created": 1764600000, "model": 'm"odel/é'}
    completion = _TextChunk(head, ',"text":', "")
    assert completion(index, text) == _sse({**head, "choices": [{"index": index, "text": text, "logprobs": None,
                                                                 "finish_reason": None}], "usage": None})
    chat_head = {**head, "object": "chat.completion.chunk"}
    chat = _TextChunk(chat_head, ',"delta":{"content":', "}")
    rendered = chat(index, text)
    assert rendered == _sse({**chat_head, "choices": [{"index": index, "delta": {"content": text}, "logprobs": None,
                                                       "finish_reason": None}], "usage": None})
    assert json.loads(rendered[6:])["choices"][0]["delta"]["content"] == text
