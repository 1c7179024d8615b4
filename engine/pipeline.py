"""`pipeline()`: the offline Python API LMDeploy users know (batch, streaming, multi-turn messages).

    pipe = pipeline()                                   # the embedded default model
    pipe(["Hi", "你好"])                                 # -> [Response, Response]
    pipe([{"role": "system", ...}, {"role": "user", ...}])   # one conversation -> Response
    for delta in pipe.stream_infer(["Hi"]): ...         # Responses carrying new text only

A string prompt is wrapped as a user message and goes through the chat template (do_preprocess=True,
as in LMDeploy); pass do_preprocess=False to send it as raw text.

    with pipeline(model, tp=2) as pipe: ...             # tensor parallelism: worker processes, stopped on exit

With tp > 1 the other ranks run in spawned worker processes: a script must build the pipeline under
`if __name__ == "__main__":` (spawned processes import the main module), and `close()` (or the with
block) stops them; they also stop when the script exits.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .config import EngineConfig
from .engine import LLMEngine
from .errors import InvalidRequestError
from .generation import GenerationConfig
from .prompt import chat_token_ids
from .request import TokenLogprob


@dataclass
class Response:
    """One prompt's result (or, from stream_infer, one delta of it)."""

    text: str
    generate_token_len: int
    input_token_len: int
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    index: int = 0


def _is_conversation(prompt) -> bool:
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(m, dict) for m in prompt)


class Pipeline:
    def __init__(self, model: str | None = None, backend_config: EngineConfig | None = None):
        self.engine = LLMEngine(model, backend_config or EngineConfig())
        self.tokenizer = self.engine.tokenizer

    def close(self) -> None:
        """Stop the tensor-parallel workers (nothing at tp 1); the pipeline cannot generate afterwards."""
        self.engine.shutdown()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- inputs ----------------------------------------------------------------------------------
    def _batch(self, prompts) -> tuple[list, bool]:
        """Normalise to a list of prompts; the bool says whether the caller passed a single prompt."""
        if isinstance(prompts, str) or _is_conversation(prompts):
            return [prompts], True
        if not isinstance(prompts, list) or not prompts:
            raise InvalidRequestError("prompts must be a string, a conversation, or a non-empty list of them",
                                      "prompts")
        return prompts, False

    def _token_ids(self, prompt, do_preprocess: bool) -> list[int]:
        if _is_conversation(prompt):
            return chat_token_ids(self.tokenizer, prompt)
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("prompt is empty", "prompt")
            if do_preprocess:
                return chat_token_ids(self.tokenizer, [{"role": "user", "content": prompt}])
            return self.engine.tokenize_prompt(prompt)
        raise InvalidRequestError(f"unsupported prompt type {type(prompt).__name__}", "prompts")

    def _submit(self, prompts, gen_config, do_preprocess: bool) -> list[str]:
        gens = gen_config if isinstance(gen_config, list) else [gen_config] * len(prompts)
        if len(gens) != len(prompts):
            raise InvalidRequestError("gen_config list must have one entry per prompt", "gen_config")
        # Validate everything before adding anything, so one bad prompt leaves the engine untouched.
        requests = [self.engine.make_request(self._token_ids(p, do_preprocess), g or GenerationConfig())
                    for p, g in zip(prompts, gens)]
        for r in requests:
            self.engine.add(r)
        return [r.request_id for r in requests]

    # -- API -------------------------------------------------------------------------------------
    def __call__(self, prompts, gen_config: GenerationConfig | list[GenerationConfig] | None = None,
                 do_preprocess: bool = True):
        return self.infer(prompts, gen_config, do_preprocess)

    def infer(self, prompts, gen_config=None, do_preprocess: bool = True):
        batch, single = self._batch(prompts)
        results = [Response("", 0, 0, index=i) for i in range(len(batch))]
        for delta in self.stream_infer(batch, gen_config, do_preprocess):
            r = results[delta.index]
            r.text += delta.text
            r.token_ids.extend(delta.token_ids)
            r.generate_token_len, r.input_token_len = delta.generate_token_len, delta.input_token_len
            r.finish_reason = delta.finish_reason
            if delta.logprobs:
                r.logprobs = (r.logprobs or []) + delta.logprobs
        return results[0] if single else results

    def stream_infer(self, prompts, gen_config=None, do_preprocess: bool = True) -> Iterator[Response]:
        """Yield Responses with only the new text/tokens of each step; `index` says which prompt."""
        batch, _ = self._batch(prompts)
        ids = self._submit(batch, gen_config, do_preprocess)
        index = {rid: i for i, rid in enumerate(ids)}
        pending = set(ids)
        try:
            while pending:
                for out in self.engine.step():
                    if out.request_id not in index:
                        continue
                    if out.finished:
                        pending.discard(out.request_id)
                    yield Response(out.text, out.num_output_tokens, out.num_prompt_tokens, out.finish_reason,
                                   list(out.token_ids), out.logprobs or None, index[out.request_id])
        finally:
            for rid in pending:  # the caller stopped iterating: free what is left
                self.engine.abort(rid)


def pipeline(model: str | None = None, backend_config: EngineConfig | None = None, **engine_kwargs) -> Pipeline:
    """Build a pipeline; `model` is a local HF dir, a .gguf file, preset:NAME, or None for the default."""
    if engine_kwargs:
        backend_config = (backend_config or EngineConfig()).replace(**engine_kwargs)
    return Pipeline(model, backend_config)
