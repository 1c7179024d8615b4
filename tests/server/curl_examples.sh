#!/usr/bin/env bash
# The README's curl examples against `opsctl serve` (default address http://127.0.0.1:23333).
# tests/server/test_curl.py runs each command below against a test server.

# List the served model.
curl http://127.0.0.1:23333/v1/models

# Chat completion.
curl http://127.0.0.1:23333/v1/chat/completions \
  -H "Content-Type: application/json" \
  -d '{"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 32, "temperature": 0}'

# Streaming chat completion (server-sent events, ends with "data: [DONE]").
curl -N http://127.0.0.1:23333/v1/chat/completions \
  -H "Content-Type: application/json" \
  -d '{"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Write a haiku about GPUs."}], "max_tokens": 32, "stream": true}'

# Text completion.
curl http://127.0.0.1:23333/v1/completions \
  -H "Content-Type: application/json" \
  -d '{"model": "SmolLM2-135M-Instruct", "prompt": "Once upon a time", "max_tokens": 32}'
