"""The closest LMDeploy and vLLM command lines for an EngineConfig, flag by flag, with what each cannot say.

One table per engine (LMDEPLOY_MAP, VLLM_MAP: one entry per EngineConfig field; a field without an
entry fails tests/toolkit/test_tune_launch.py). Each entry returns the flags, environment variables
and notes for one setting; a note says where the other engine has no equivalent or a different
meaning (LMDeploy's cache_max_entry_count is a fraction of the memory left free after the weights,
vLLM's --gpu-memory-utilization a fraction of the whole card: gpu_memory_utilization() converts).

Memory is GiB (2^30 bytes) throughout, as in the hardware profiles.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.config import EngineConfig, flag_names

DEFAULT_HOST = "0.0.0.0"  # a deployed server is reached from other hosts (`opsctl serve` alone binds 127.0.0.1)
DEFAULT_PORT = 23333  # LMDeploy's and `opsctl serve`'s port
# vLLM warns that it may fail to start when free memory at start-up is below u x total; above this
# the margin left for the CUDA context and other processes is thin, so the note says so.
VLLM_TIGHT_UTILIZATION = 0.95


# -- translation tables -------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    """What one table entry may look at besides its own value."""

    config: EngineConfig
    default: Any  # this field's EngineConfig default
    weights_gib: float | None = None  # the model's weight bytes / 2^30, all GPUs together
    memory_gib: float | None = None  # one card's memory (the CPU profile: the host's)


@dataclass
class Part:
    """One setting's translation: flags, environment variables, notes."""

    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


Translate = Callable[[Any, Context], Part]


def number_text(value) -> str:
    """A number as a flag value: integers without a point, floats with every digit they need."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def _flag(name: str, *, always: bool = False) -> Translate:
    """The same setting under `name`; written when it differs from opsctl's default, or always where
    the other engine's default differs from opsctl's. None (engine picks) writes nothing."""
    def translate(value, ctx: Context) -> Part:
        if value is None or (not always and value == ctx.default):
            return Part()
        return Part([name, number_text(value)])
    return translate


def _switch(on: str | None, off: str | None = None) -> Translate:
    """A boolean as `on` / `off` flags (off None: the other engine is off unless told)."""
    def translate(value, ctx: Context) -> Part:
        flag = on if value else off
        return Part([flag] if flag else [])
    return translate


def _missing(why: str) -> Translate:
    """No equivalent: nothing to write; a note when the value is not opsctl's default."""
    def translate(value, ctx: Context) -> Part:
        return Part() if value == ctx.default else Part(notes=[why])
    return translate


def _head_note(why: str) -> Translate:
    """--lm-head-int8: a note where opsctl holds the head in int8 and the other engine would not: on, or auto with
    int8 / AWQ weights (auto's int8 head comes with the CUDA weight kernels, which auto runs on Hopper)."""
    def translate(value, ctx: Context) -> Part:
        if value == "on":
            return Part(notes=[why])
        if value == "auto" and ctx.config.model_format in ("int8", "awq"):
            return Part(notes=[f"{why}; opsctl's default (auto) makes it int8 on Hopper for these weights"])
        return Part()
    return translate


def _floor3(x: float) -> float:
    """Rounded down to 0.001: a converted fraction never gives the other engine more than opsctl used."""
    return math.floor(x * 1000 + 1e-9) / 1000  # + 1e-9: 0.835 computed as 0.83499... is still 0.835


def gpu_memory_utilization(cache_ratio: float, weights_gib: float | None, memory_gib: float | None,
                           tp: int = 1, cap_gib: float | None = None) -> float | None:
    """vLLM's --gpu-memory-utilization giving the KV cache that opsctl's (LMDeploy's) ratio gives.

    opsctl gives the KV cache r x (C - W), where W is the weights per GPU (weights / tp) and C the
    card's memory M, or the --gpu-memory-gb cap when that is smaller; vLLM lets the whole instance
    use u x M and keeps for the KV cache what weights and activations leave. Equal KV memory:
    u x M - W = r x (C - W), so u = (W + r x (C - W)) / M, rounded down to 0.001. None when a figure
    is unknown or the weights do not fit.
    """
    if weights_gib is None or memory_gib is None or memory_gib <= 0:
        return None
    w, c = weights_gib / tp, min(memory_gib, cap_gib or memory_gib)
    if w >= c:
        return None
    return _floor3((w + cache_ratio * (c - w)) / memory_gib)


def capped_cache_ratio(cache_ratio: float, weights_gib: float | None, memory_gib: float | None, tp: int = 1,
                       cap_gib: float | None = None) -> float | None:
    """The plain cache ratio that gives, on a card of memory_gib, the KV cache opsctl gives under a
    --gpu-memory-gb cap: r x (G - W) / (M - W), rounded down to 0.001 (W the weights per GPU).
    None when a figure is unknown, the cap does not bind (G >= M) or the weights do not fit."""
    if cap_gib is None or weights_gib is None or memory_gib is None or cap_gib >= memory_gib:
        return None
    w = weights_gib / tp
    if w >= cap_gib:
        return None
    return _floor3(cache_ratio * (cap_gib - w) / (memory_gib - w))


def _lmdeploy_cache(value, ctx: Context) -> Part:
    """Same name and meaning (fraction of the memory free after the weights, or a block count); LMDeploy
    has no cap on GPU memory, so a --gpu-memory-gb cap that binds is folded into the ratio."""
    cfg = ctx.config
    cap = cfg.gpu_memory_gb
    plain = Part([] if value == ctx.default else ["--cache-max-entry-count", number_text(value)])
    if cap is None or cfg.cache_is_block_count:
        return plain
    if ctx.memory_gib is not None and cap >= ctx.memory_gib:
        return plain  # the cap is the card itself (an emulated card launched on the real one)
    r = capped_cache_ratio(value, ctx.weights_gib, ctx.memory_gib, cfg.tp, cap)
    if r is None:
        plain.notes.append(f"LMDeploy cannot cap GPU memory at {cap:g} GiB (--gpu-memory-gb) and the ratio was "
                           f"not adjusted (the weights and the card's memory are needed); on a bigger card it "
                           f"takes more KV cache than opsctl did")
        return plain
    return Part(["--cache-max-entry-count", number_text(r)],
                notes=[f"LMDeploy cannot cap GPU memory at {cap:g} GiB (--gpu-memory-gb): ratio {r:g} = "
                       f"r x (G - W) / (M - W) with r = {value:g}, G = {cap:g} GiB, W = "
                       f"{ctx.weights_gib / cfg.tp:g} GiB of weights per GPU, M = {ctx.memory_gib:g} GiB card "
                       f"gives the same KV cache"])


def _vllm_cache(value, ctx: Context) -> Part:
    cfg = ctx.config
    if cfg.cache_is_block_count:
        return Part(["--num-gpu-blocks-override", str(int(value))],
                    notes=[f"a block count: vLLM's --num-gpu-blocks-override takes the same {int(value)} blocks "
                           f"of --block-size tokens (vLLM still profiles memory before it allocates them)"])
    if cfg.device == "cpu":
        gib = cfg.cpu_memory_gb * value
        # vLLM's CPU build reads VLLM_CPU_KVCACHE_SPACE as whole GiB (0 means its own default).
        return Part(env={"VLLM_CPU_KVCACHE_SPACE": str(max(1, int(gib)))},
                    notes=[f"vLLM's CPU backend sizes its KV cache in GiB (VLLM_CPU_KVCACHE_SPACE): "
                           f"cpu_memory_gb x ratio = {cfg.cpu_memory_gb:g} x {value:g} = {gib:g} GiB, "
                           f"rounded down to whole GiB"])
    cap = cfg.gpu_memory_gb
    u = gpu_memory_utilization(value, ctx.weights_gib, ctx.memory_gib, cfg.tp, cap)
    if u is None:
        why = ("the weights do not fit" if ctx.weights_gib is not None and ctx.memory_gib is not None
               else "the model's weight size and the card's memory are needed and were not given")
        return Part(notes=[f"not converted to --gpu-memory-utilization ({why}): vLLM's is the fraction of the "
                           f"whole card the instance may use, opsctl's the fraction of the memory left after "
                           f"the weights; vLLM keeps its default"])
    w, card = ctx.weights_gib / cfg.tp, ctx.memory_gib
    c = "M" if cap is None or cap >= card else f"G = {cap:g} GiB (--gpu-memory-gb)"
    notes = [f"--gpu-memory-utilization {u:g} = (W + r x (C - W)) / M with W = {w:g} GiB of weights per GPU, "
             f"M = {card:g} GiB card, C = {c}, r = {value:g}: vLLM's is the fraction of the whole card for "
             f"weights, activations and KV cache, so its KV cache comes out smaller by its activation peak"]
    if u > VLLM_TIGHT_UTILIZATION:
        notes.append(f"--gpu-memory-utilization {u:g} leaves little room for the CUDA context: vLLM refuses to "
                     f"start when less than u x total is free at start-up; lower it if it does")
    return Part(["--gpu-memory-utilization", number_text(u)], notes=notes)


def _lmdeploy_batch(value, ctx: Context) -> Part:
    if value is None:
        return Part(notes=["left to LMDeploy, which picks by GPU as opsctl does but with its own table; "
                           "pass --max-batch-size to pin it"])
    return Part(["--max-batch-size", str(value)])


def _vllm_batch(value, ctx: Context) -> Part:
    if value is None:
        return Part(notes=["left to vLLM, whose default --max-num-seqs depends on its version and the GPU; "
                           "pass --max-num-seqs to pin it"])
    return Part(["--max-num-seqs", str(value)])


def _lmdeploy_prefill(value, ctx: Context) -> Part:
    return Part([] if value == ctx.default else ["--max-prefill-token-num", str(value)],
                notes=["LMDeploy's --max-prefill-token-num budgets the prefill tokens of a step; opsctl's "
                       "counts the step's decode tokens too"])


def _vllm_prefill(value, ctx: Context) -> Part:
    # vLLM's default differs by version and GPU (2048 to 16384), so the budget is always written.
    part = Part(["--max-num-batched-tokens", str(value)])
    batch = ctx.config.max_batch_size
    if batch is not None and value < batch:
        part.notes.append(f"vLLM refuses --max-num-batched-tokens below --max-num-seqs ({batch}); raise it to "
                          f"at least {batch}")
    return part


def _vllm_block(value, ctx: Context) -> Part:
    part = Part(["--block-size", str(value)])  # always: vLLM's default is 16 tokens, opsctl's 64
    if value not in (16, 32):
        part.notes.append(f"vLLM's attention backends accept only some block sizes (FlashAttention: multiples "
                          f"of 16; older CUDA builds up to 32); if vLLM refuses {value}, use 16 or 32")
    return part


def _lmdeploy_format(value, ctx: Context) -> Part:
    if value == "gguf":
        return Part(notes=["LMDeploy does not load GGUF files: serve the original HF checkpoint "
                           "(--model-format hf) or an AWQ one (--model-format awq)"])
    return _flag("--model-format")(value, ctx)


def _vllm_format(value, ctx: Context) -> Part:
    if value == "awq":
        return Part(notes=["vLLM reads the AWQ quantization_config from the checkpoint and picks its Marlin "
                           "kernels where the GPU has them; --quantization awq would force the slower kernel, "
                           "so it is left out"])
    if value == "gguf":
        return Part(notes=["vLLM loads one .gguf file given as the model path (experimental); pass --tokenizer "
                           "with the original model's HF id, and merge split GGUF files first"])
    return Part()  # hf and detected: vLLM detects the format as opsctl does


def _vllm_kv_quant(value, ctx: Context) -> Part:
    if value == 8:
        return Part(["--kv-cache-dtype", "fp8"],
                    notes=["vLLM has no int8 KV cache: fp8 (e4m3) takes the same memory, with different "
                           "rounding than opsctl's/LMDeploy's int8"])
    if value == 4:
        return Part(notes=["vLLM has no 4-bit KV cache; left at the model's dtype (twice to four times the "
                           "KV memory per token, fewer tokens fit)"])
    return Part()


def _lmdeploy_dtype(value, ctx: Context) -> Part:
    if value == "float32":
        return Part(notes=["LMDeploy serves float16 or bfloat16 only (its --dtype has no float32)"])
    if value == "auto":
        return Part(notes=["auto: opsctl picks float16 for float16 checkpoints, bfloat16 otherwise on CUDA and "
                           "float32 on CPU; LMDeploy follows the checkpoint and may pick differently for "
                           "float32 ones: pass --dtype to pin it"])
    return Part(["--dtype", value])


def _vllm_dtype(value, ctx: Context) -> Part:
    if value == "auto":
        return Part(notes=["auto: opsctl picks float16 for float16 checkpoints, bfloat16 otherwise on CUDA and "
                           "float32 on CPU; vLLM follows the checkpoint and may pick differently for float32 "
                           "ones: pass --dtype to pin it"])
    return Part(["--dtype", value])


def _cuda_index(device: str) -> str | None:
    return device.split(":", 1)[1] if device.startswith("cuda:") else None


def _lmdeploy_device(value, ctx: Context) -> Part:
    if value == "cpu":
        return Part(notes=["LMDeploy has no CPU backend (its --device takes cuda, ascend, maca or camb)"])
    index = _cuda_index(value)
    if index is not None:
        return Part(env={"CUDA_VISIBLE_DEVICES": index},
                    notes=[f"LMDeploy has no GPU index flag: CUDA_VISIBLE_DEVICES={index} shows it only that GPU"])
    return Part()


def _vllm_device(value, ctx: Context) -> Part:
    if value == "cpu":
        return Part(notes=["vLLM runs on CPU only as its CPU build (a separate wheel or image); no flag picks it"])
    index = _cuda_index(value)
    if index is not None:
        return Part(env={"CUDA_VISIBLE_DEVICES": index},
                    notes=[f"vLLM has no GPU index flag: CUDA_VISIBLE_DEVICES={index} shows it only that GPU"])
    return Part()


def _lmdeploy_eager(value, ctx: Context) -> Part:
    if not value:
        return Part()
    return Part(["--eager-mode"], notes=["--eager-mode is an option of LMDeploy's PyTorch backend "
                                         "(--backend pytorch); its default TurboMind backend ignores it"])


def _vllm_deterministic(value, ctx: Context) -> Part:
    if not value:
        return Part()
    return Part(env={"VLLM_BATCH_INVARIANT": "1"},
                notes=["vLLM's batch invariance (VLLM_BATCH_INVARIANT=1, beta) needs a recent vLLM and an "
                       "NVIDIA GPU of compute capability 8.0 or later (9.0 in some versions), and covers "
                       "fewer features than opsctl's --deterministic"])


def _vllm_overlap(value, ctx: Context) -> Part:
    # auto: opsctl overlaps on CUDA; vLLM decides by version and features, so nothing is written.
    return Part({"on": ["--async-scheduling"], "off": ["--no-async-scheduling"]}.get(value, []))


def _vllm_cpu_memory(value, ctx: Context) -> Part:
    if value == ctx.default or ctx.config.device == "cpu":
        return Part()  # on CPU it is folded into VLLM_CPU_KVCACHE_SPACE (the cache_max_entry_count entry)
    return Part(notes=["the CPU memory budget applies only where opsctl falls back to CPU; vLLM's CPU build "
                       "takes its KV cache size from VLLM_CPU_KVCACHE_SPACE (GiB)"])


def _folded(value, ctx: Context) -> Part:
    """gpu_memory_gb: neither engine caps GPU memory; the cache_max_entry_count entries fold the cap
    into the cache size (and say so)."""
    return Part()


_DEBUG_KERNELS = "the torch reference path instead of the Triton kernels is an opsctl debugging switch; no equivalent"
_DEBUG_INVARIANTS = "the per-step scheduler and KV pool checks are opsctl's own (debugging); no equivalent"
_DEBUG_STEP_DELAY = "the per-step delay is opsctl's own (a slowed engine for testing gates); no equivalent"

# One entry per EngineConfig field, in its order.
LMDEPLOY_MAP: dict[str, Translate] = {
    "tp": _flag("--tp"),
    "nnodes": _flag("--nnodes"),
    "node_rank": _flag("--node-rank"),
    "max_batch_size": _lmdeploy_batch,
    "cache_max_entry_count": _lmdeploy_cache,
    "cache_block_seq_len": _flag("--cache-block-seq-len"),
    "session_len": _flag("--session-len"),
    "max_prefill_token_num": _lmdeploy_prefill,
    "enable_prefix_caching": _switch("--enable-prefix-caching"),  # off unless asked, as in opsctl
    "model_format": _lmdeploy_format,
    "quant_policy": _flag("--quant-policy"),
    "w4_kernel": _missing("LMDeploy's TurboMind runs AWQ weights through its own CUDA kernels: no kernel to choose"),
    "w8_kernel": _missing("LMDeploy has no switch for the kernels of 8-bit weights"),
    "lm_head_int8": _head_note("LMDeploy keeps the output head (lm_head) 16-bit in every weight format"),
    "dtype": _lmdeploy_dtype,
    "device": _lmdeploy_device,
    "eager_mode": _lmdeploy_eager,
    "deterministic": _missing("LMDeploy has no batch-invariant mode: a request's tokens may change with its batch"),
    "kernels": _missing(_DEBUG_KERNELS),
    "overlap": _missing("LMDeploy has no switch for overlapping scheduling with the GPU step"),
    "engine_process": _missing("LMDeploy has no switch for where its engine runs"),
    "gpu_memory_gb": _folded,
    "cpu_memory_gb": _missing("LMDeploy has no CPU backend, so no CPU memory budget"),
    "seed": _missing("LMDeploy's server takes no seed: pass `seed` in each request to make sampling repeatable"),
    "debug_invariants": _missing(_DEBUG_INVARIANTS),
    "debug_step_delay_ms": _missing(_DEBUG_STEP_DELAY),
}

VLLM_MAP: dict[str, Translate] = {
    "tp": _flag("--tensor-parallel-size"),
    "nnodes": _flag("--nnodes"),
    "node_rank": _flag("--node-rank"),
    "max_batch_size": _vllm_batch,
    "cache_max_entry_count": _vllm_cache,
    "cache_block_seq_len": _vllm_block,
    "session_len": _flag("--max-model-len"),
    "max_prefill_token_num": _vllm_prefill,
    # always: vLLM (V1) caches prefixes unless told not to, opsctl does not
    "enable_prefix_caching": _switch("--enable-prefix-caching", "--no-enable-prefix-caching"),
    "model_format": _vllm_format,
    "quant_policy": _vllm_kv_quant,
    "w4_kernel": _missing("vLLM chooses its AWQ kernel itself (awq_marlin on compute capability 8.0 and newer)"),
    "w8_kernel": _missing("vLLM has no switch for the kernels of 8-bit weights: it picks them itself"),
    "lm_head_int8": _head_note("vLLM keeps the output head (lm_head) 16-bit unless the checkpoint quantized it "
                             "(GPTQ's lm_head): no switch to quantize it at load"),
    "dtype": _vllm_dtype,
    "device": _vllm_device,
    "eager_mode": _switch("--enforce-eager"),
    "deterministic": _vllm_deterministic,
    "kernels": _missing(_DEBUG_KERNELS),
    "overlap": _vllm_overlap,
    "engine_process": _missing("vLLM's API server always runs its engine core in its own process"),
    "gpu_memory_gb": _folded,
    "cpu_memory_gb": _vllm_cpu_memory,
    "seed": _flag("--seed", always=True),  # older vLLM defaults to no seed
    "debug_invariants": _missing(_DEBUG_INVARIANTS),
    "debug_step_delay_ms": _missing(_DEBUG_STEP_DELAY),
}


def _opsctl_setting(f: dataclasses.Field, value) -> str:
    """How a note names the opsctl setting it is about: its flag as the user would type it."""
    flag = flag_names(f)[0]
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    return f"{flag} {'(unset)' if value is None else number_text(value)}"


def _translate(table: dict[str, Translate], config: EngineConfig, weights_gib, memory_gib) -> Part:
    out = Part()
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        entry = table.get(f.name)
        if entry is None:  # a new EngineConfig field: say so rather than drop it (the tests catch it first)
            out.notes.append(f"{_opsctl_setting(f, value)}: no translation for this setting yet")
            continue
        part = entry(value, Context(config, f.default, weights_gib, memory_gib))
        out.args += part.args
        out.env.update(part.env)
        out.notes += [f"{_opsctl_setting(f, value)}: {note}" for note in part.notes]
    return out


def _with_env(env: dict[str, str], argv: list[str]) -> list[str]:
    return ["env", *(f"{k}={v}" for k, v in env.items()), *argv] if env else argv


def lmdeploy_command(model: str, config: EngineConfig, *, weights_gib: float | None = None,
                     memory_gib: float | None = None, host: str = DEFAULT_HOST,
                     port: int = DEFAULT_PORT) -> tuple[list[str], list[str]]:
    """The closest `lmdeploy serve api_server` argv to `config`, and a note per setting that differs.

    weights_gib and memory_gib are needed only to fold a --gpu-memory-gb cap into the cache ratio.
    """
    part = _translate(LMDEPLOY_MAP, config, weights_gib, memory_gib)
    argv = ["lmdeploy", "serve", "api_server", model, *part.args, "--server-name", host, "--server-port", str(port)]
    return _with_env(part.env, argv), part.notes


def vllm_command(model: str, config: EngineConfig, *, weights_gib: float | None = None,
                 memory_gib: float | None = None, host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT) -> tuple[list[str], list[str]]:
    """The closest `vllm serve` argv to `config`, and a note per setting that differs.

    weights_gib (the model's weights, all GPUs) and memory_gib (one card) convert the cache ratio to
    --gpu-memory-utilization; without them the note says it was not converted.
    """
    part = _translate(VLLM_MAP, config, weights_gib, memory_gib)
    argv = ["vllm", "serve", model, *part.args, "--host", host, "--port", str(port)]
    return _with_env(part.env, argv), part.notes
