"""Peers measured in the same run as the engine: plain transformers on the same model and workload.

`generate`: what a user gets from `model.generate` on a padded batch (static batching: the batch runs
until its longest output is done). `generate_batch`: transformers' own continuous batching.
Both produce exactly the workload's output lengths (EOS ignored); only those tokens are counted.
"""
from __future__ import annotations

import time

from ..report.schema import Run
from .cpu_time import CpuAccount
from .metrics import RequestRecord, summarize
from .offline import OfflineWorkload, sync_device


def load_hf_model(source, device: str, dtype):
    """transformers' model for a ModelSource: from its weights, or random weights for a preset."""
    import torch
    from transformers import AutoModelForCausalLM

    if source.kind == "preset":
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(source.hf_config, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(source.weights_path, dtype=dtype).to(device)
    return model.eval()


def run_generate(model, workload: OfflineWorkload, device: str, batch_size: int, model_name: str,
                 pad_token_id: int, static_cache: bool = False, repeats: int = 1) -> Run:
    """Padded batches of `batch_size` (left padding); each batch decodes until its longest output.

    repeats > 1 keeps the fastest of that many runs (as for the engine)."""
    import torch

    kwargs = {"cache_implementation": "static"} if static_cache else {}
    order = list(range(len(workload.prompts)))
    records: list[RequestRecord] = [None] * len(order)  # type: ignore[list-item]

    def generate(indices, new_tokens=None):
        prompts = [workload.prompts[i] for i in indices]
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        new = new_tokens or max(workload.output_lens[i] for i in indices)
        with torch.inference_mode():
            model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=pad_token_id, **kwargs)

    def measure():
        sync_device(device)
        account = CpuAccount.start()
        start = time.perf_counter()
        for b in range(0, len(order), batch_size):
            batch = order[b:b + batch_size]
            generate(batch)
            sync_device(device)
            now = time.perf_counter() - start
            for i in batch:  # a padded batch returns all of its outputs at once
                records[i] = RequestRecord(i, 0.0, len(workload.prompts[i]), workload.output_lens[i], e2e_s=now)
        duration = time.perf_counter() - start
        return duration, list(records), account.figures(sum(workload.output_lens[i] for i in order))

    # Warm-up: first-call allocations need a few tokens (decoding the batch's full output here cost 17 of
    # the CPU gate's 86 s per bench run, 2026-12-03); a static cache is sized by the output length, so
    # its compiled shapes need the full one.
    generate(order[:min(batch_size, 2)], new_tokens=None if static_cache else 8)
    duration, records, cpu = min((measure() for _ in range(repeats)), key=lambda run: run[0])
    label = "transformers generate" + (" (static cache)" if static_cache else "")
    return Run(label=label, target="transformers-generate", model=model_name, workload=workload.describe(),
               load={"batch_size": batch_size}, config={"static_cache": static_cache, "dtype": str(model.dtype)},
               summary=summarize(records, duration, extra=cpu)).with_records(records)


def run_generate_batch(model, workload: OfflineWorkload, device: str, model_name: str) -> Run:
    """transformers' continuous batching (`generate_batch`) over the whole workload."""
    from transformers import GenerationConfig

    new = max(workload.output_lens)
    config = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=-1,
                              pad_token_id=0)
    model.generate_batch(workload.prompts[:2], generation_config=config)  # warm-up
    sync_device(device)
    start = time.perf_counter()
    model.generate_batch(workload.prompts, generation_config=config)
    sync_device(device)
    duration = time.perf_counter() - start
    records = [RequestRecord(i, 0.0, len(p), n, e2e_s=duration)
               for i, (p, n) in enumerate(zip(workload.prompts, workload.output_lens))]
    return Run(label="transformers generate_batch", target="transformers-generate-batch", model=model_name,
               workload=workload.describe(), config={"dtype": str(model.dtype)},
               summary=summarize(records, duration)).with_records(records)
