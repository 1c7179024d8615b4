"""How tensor parallelism splits a model across ranks, and whether a tp fits a model at all.

Rank r of tp holds (Megatron's split, as vLLM and LMDeploy make it):
- query heads r * H/tp .. (r + 1) * H/tp - 1 (column-parallel qkv, row-parallel o_proj);
- KV heads: with tp <= KV heads, KV/tp of them, those its query heads read; with tp > KV heads, the
  one KV head its query heads read, replicated on tp/KV ranks (so tp must be a multiple of KV);
- MLP intermediate columns r * I/tp .. (column-parallel gate/up, row-parallel down);
- vocab rows r * ceil(V/tp) .. of the embedding and the LM head; the last rank's rows past V are zero
  padding, cut off once the logits are gathered.

`check_tensor_parallel` reads config.json only, so a tp that does not fit fails in one line before any
weight is read.
"""
from __future__ import annotations

from ..errors import InvalidRequestError

AWQ_PACK = 8  # int4 values per int32 along the output dimension (engine/quant/int4_pack.py)


def even_part(total: int, tp: int, rank: int) -> tuple[int, int]:
    """(start, size) of rank's share of `total` split evenly (the caller checked that tp divides it)."""
    size = total // tp
    return rank * size, size


def kv_heads_part(num_kv_heads: int, tp: int, rank: int) -> tuple[int, int]:
    """(first KV head, count) a rank holds: its share, or the one head its query heads read when tp > KV."""
    if tp <= num_kv_heads:
        return even_part(num_kv_heads, tp, rank)
    return rank * num_kv_heads // tp, 1


def vocab_part(vocab_size: int, tp: int, rank: int) -> tuple[int, int, int]:
    """(first row, rows held, rows that are real vocab): every rank holds ceil(V/tp) rows so the gathered
    logits are equal-sized; past V they are padding."""
    rows = -(-vocab_size // tp)
    start = rank * rows
    return start, rows, max(0, min(rows, vocab_size - start))


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def check_tensor_parallel(hf_config, tp: int, weight_format: str = "hf", group_size: int = 0,
                          name: str = "this model") -> None:
    """InvalidRequestError (param "tp") saying why `tp` cannot split this model, or nothing."""
    if tp == 1:
        return
    from ..models.llama import head_dim_of

    heads = hf_config.num_attention_heads
    kv = getattr(hf_config, "num_key_value_heads", None) or heads
    inter = hf_config.intermediate_size
    if heads % tp:
        raise InvalidRequestError(f"--tp {tp} does not divide the {heads} attention heads of {name}: use a tp "
                                  f"that divides {heads} ({_divisors(heads)})", "tp")
    if (kv % tp) if tp <= kv else (tp % kv):
        raise InvalidRequestError(f"--tp {tp} cannot split the {kv} KV heads of {name}: tp must divide {kv} or be "
                                  f"a multiple of it", "tp")
    if inter % tp:
        raise InvalidRequestError(f"--tp {tp} does not divide the MLP size {inter} of {name}: use a tp that "
                                  f"divides {inter}", "tp")
    if weight_format != "awq":
        return
    # AWQ's packed layout: qweight [K, N/8] is split along N in whole int32 columns (8 outputs each), and
    # along K (o_proj, down_proj) only at the boundaries of its scale groups.
    head_dim = head_dim_of(hf_config)
    columns = {"q_proj": heads // tp * head_dim, "k_proj/v_proj": max(1, kv // tp) * head_dim,
               "gate_proj/up_proj": inter // tp}
    for what, size in columns.items():
        if size % AWQ_PACK:
            raise InvalidRequestError(f"--tp {tp} leaves {size} output columns of {name}'s AWQ {what} per rank, "
                                      f"not a multiple of {AWQ_PACK} (one packed int32): use a smaller tp", "tp")
    rows = {"o_proj": heads * head_dim // tp, "down_proj": inter // tp}
    for what, size in rows.items():
        if size % group_size:
            raise InvalidRequestError(f"--tp {tp} splits {name}'s AWQ {what} input into {size} rows per rank, not a "
                                      f"multiple of the group size {group_size}: use a smaller tp", "tp")
