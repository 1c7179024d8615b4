"""opsctl's inference engine: paged KV cache, continuous batching, chunked prefill, on CPU and CUDA.

    from engine import pipeline, EngineConfig, GenerationConfig
    pipe = pipeline()                       # the embedded default model
    print(pipe(["Hello"])[0].text)
"""
from .config import EngineConfig
from .errors import EngineError, InvalidRequestError, ModelLoadError, OutOfMemoryError
from .generation import GenerationConfig
from .pipeline import Pipeline, Response, pipeline

__all__ = ["EngineConfig", "GenerationConfig", "EngineError", "InvalidRequestError", "ModelLoadError",
           "OutOfMemoryError", "pipeline", "Pipeline", "Response"]
