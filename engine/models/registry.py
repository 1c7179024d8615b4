"""Which of our model classes implements a checkpoint's `architectures` entry."""
from __future__ import annotations

from ..errors import ModelLoadError
from .llama import LlamaForCausalLM
from .qwen2 import Qwen2ForCausalLM, Qwen3ForCausalLM

MODEL_CLASSES = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def model_class(hf_config):
    for arch in getattr(hf_config, "architectures", None) or []:
        if arch in MODEL_CLASSES:
            return MODEL_CLASSES[arch]
    by_type = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM,
               "qwen3": Qwen3ForCausalLM}
    model_type = getattr(hf_config, "model_type", None)
    if model_type in by_type:
        return by_type[model_type]
    raise ModelLoadError(f"unsupported architecture {getattr(hf_config, 'architectures', None) or model_type!r}; "
                         f"supported: {', '.join(MODEL_CLASSES)}")
