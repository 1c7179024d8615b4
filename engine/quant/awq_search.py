"""AWQ's arithmetic on one decoder layer: activation-aware scales, folding them away, weight clipping.

Pure functions on modules and tensors (no model loading, no files), after AutoAWQ's quantizer and
LMDeploy's lite/quantization/awq.py, written anew:

- `search_scale` (AutoAWQ's `_search_best_scale`, LMDeploy's --search-scale): for a group of linears
  that read the same input x, try s = mean|x|^a / (mean-normalised |W|)^(1-a) ("duo" scaling,
  AutoAWQ's and LMDeploy's default) and s = mean|x|^a (the AWQ paper's, "x") for a in {0, 1/20, ...,
  19/20}; quantize W*s, run the module(s) on x/s (as W_q(s)/s on x) and keep the candidate whose output
  is closest to the float output. In the "x" form a = 0 is plain round-to-nearest (s = 1), so a search
  that includes it never does worse than RTN on its own data; in the duo form a = 0 is s = 1/w_mean.
- `smooth_scale` (LMDeploy's default, without --search-scale): one fixed ratio 0.5 from the
  activations' absolute maximum, no search.
- `fold_scale`: x/s moves into the op before (an RMSNorm's weight, or the rows of the previous
  linear), W*s into the linears: the float model computes the same function.
- `search_clip` (AutoAWQ's `_search_best_clip`): per output row and group, shrink the weight range
  to (1 - i/20) of its max for i < 10 and keep the one with the least output error over the
  calibration tokens, from their per-group second moment (`second_moment`, `scale_moment`).

Rounding is int4_pack.quantize_groups (asymmetric min/max), the same as the packed output's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch
from torch import nn

from .int4_pack import quantize_groups

N_GRID = 20
SMOOTH_RATIO = 0.5  # LMDeploy's fixed ratio without --search-scale


@dataclass
class ScaleGroup:
    """Linears that read one input, the op that produces it, and how to judge a scale.

    `inspect` runs the module whose output the search compares (the whole attention for q/k/v, the
    whole MLP for gate/up, the linear itself otherwise); it must read the linears' current weights.
    """

    name: str
    prev: nn.Module  # an RMSNorm (weight per channel) or the previous nn.Linear
    linears: list[nn.Linear]
    inspect: Callable[[torch.Tensor], torch.Tensor]
    x: torch.Tensor | None = None  # search inputs [..., K]
    x_absmean: torch.Tensor | None = None  # [K], over all calibration tokens
    x_absmax: torch.Tensor | None = None  # [K]
    history: list[float] = field(default_factory=list)  # the search's loss per candidate


@torch.no_grad()
def fake_quantize(weight: torch.Tensor, group_size: int, bits: int = 4) -> torch.Tensor:
    """W [N, K] rounded to its int4 grid and back (what the packed weight will compute with)."""
    codes, zeros, scales = quantize_groups(weight, group_size, bits)
    n, k = weight.shape
    codes = codes.view(n, k // group_size, group_size).float()
    return ((codes - zeros[..., None]) * scales[..., None]).view(n, k).to(weight.dtype)


@torch.no_grad()
def weight_mean(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """Per input channel, the mean of |W| relative to its group's max (AutoAWQ's w_mean) [K]."""
    w = torch.cat([t.float() for t in weights], dim=0)
    n, k = w.shape
    grouped = w.abs().view(-1, group_size)
    grouped = grouped / (grouped.amax(dim=1, keepdim=True) + 1e-6)
    return grouped.view(n, k).mean(0)


def _normalise(scales: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    # Centre the scales geometrically (max * min = 1) so neither side of the fold grows; inf/nan -> 1.
    ref = scales if valid is None else scales[valid]
    scales = scales / (ref.max() * ref.min()).sqrt()
    scales[~torch.isfinite(scales)] = 1.0
    return scales


SCALE_FORMS = ("duo", "x")  # s = x^a / w^(1-a) (AutoAWQ's duo_scaling) and s = x^a (the paper's)


def check_scale_forms(forms: tuple[str, ...]) -> None:
    """ValueError unless `forms` names one or more of SCALE_FORMS."""
    if not forms or set(forms) - set(SCALE_FORMS):
        raise ValueError(f"scale forms {forms!r}: choose one or more of {SCALE_FORMS}")


class ScaleSearch(NamedTuple):
    """What search_scale chose: the scales, and the form and ratio a that gave them."""

    scales: torch.Tensor
    ratio: float
    form: str  # one of SCALE_FORMS


def ratio_scales(x_mean: torch.Tensor, w_mean: torch.Tensor | None, ratio: float) -> torch.Tensor:
    """s = x^ratio, or x^ratio / w^(1 - ratio) with duo scaling (w_mean given); normalised."""
    x_mean = x_mean.float()
    if w_mean is None:
        scales = x_mean.pow(ratio).clamp(min=1e-4)
    else:
        scales = (x_mean.pow(ratio) / (w_mean.float().pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
    return _normalise(scales)


@torch.no_grad()
def search_scale(group: ScaleGroup, group_size: int, *, forms: tuple[str, ...] = SCALE_FORMS,
                 n_grid: int = N_GRID) -> ScaleSearch:
    """The best scales for `group` on its search inputs among n_grid ratios of each form in `forms`.

    The linears' weights are restored before returning; `group.history` gets the loss per candidate,
    form by form in the order given (on ties the earlier candidate stays: the smaller ratio, the first form).
    """
    check_scale_forms(forms)
    x = group.x
    x_mean = group.x_absmean if group.x_absmean is not None else x.abs().reshape(-1, x.shape[-1]).mean(0)
    originals = [fc.weight.data.clone() for fc in group.linears]
    w_mean = weight_mean(originals, group_size) if "duo" in forms else None
    reference = _first(group.inspect(x))
    best, best_loss = None, float("inf")
    group.history = []
    try:
        for form in forms:
            for i in range(n_grid):
                ratio = i / n_grid
                scales = ratio_scales(x_mean, w_mean if form == "duo" else None, ratio).to(originals[0].dtype)
                row = scales.view(1, -1)
                for fc, w in zip(group.linears, originals):
                    fc.weight.data = fake_quantize(w * row, group_size) / row
                loss = (reference - _first(group.inspect(x))).float().pow(2).mean().item()
                group.history.append(loss)
                if loss < best_loss:  # strict: on ties the earlier candidate (closer to plain RTN) stays
                    best, best_loss = ScaleSearch(scales.clone(), ratio, form), loss
    finally:
        for fc, w in zip(group.linears, originals):
            fc.weight.data = w
    if best is None:  # every loss was nan: the layer's outputs are not finite
        raise FloatingPointError(f"AWQ scale search for {group.name}: every candidate gave a non-finite error")
    return best


@torch.no_grad()
def smooth_scale(group: ScaleGroup, group_size: int, ratio: float = SMOOTH_RATIO) -> torch.Tensor:
    """LMDeploy's scales without --search-scale: absmax(x)^r / w_mean^(1-r), normalised.

    Channels a norm zeroes out keep scale 1 (they carry nothing, and would set the normalisation).
    """
    w = torch.cat([fc.weight.data.float() for fc in group.linears], dim=0)
    grouped = w.abs().view(-1, group_size)
    grouped = grouped / grouped.amax(dim=1, keepdim=True).clamp(min=1e-4)
    w_mean = grouped.view(w.shape).mean(0)
    scales = (group.x_absmax.float().pow(ratio) / w_mean.pow(1 - ratio).clamp(min=1e-4)).clamp(min=1e-4)
    zero = (group.prev.weight.data == 0) if not isinstance(group.prev, nn.Linear) else None
    scales = _normalise(scales, None if zero is None or zero.all() else ~zero)
    if zero is not None:
        scales[zero] = 1.0
    return scales.to(group.linears[0].weight.dtype)


@torch.no_grad()
def fold_scale(prev: nn.Module, linears: list[nn.Linear], scales: torch.Tensor) -> None:
    """Divide `prev`'s output channels by s and multiply the linears' input columns by s, in place."""
    scales = scales.to(linears[0].weight.dtype)
    if isinstance(prev, nn.Linear):
        prev.weight.data[-scales.numel():].div_(scales.view(-1, 1))
        if prev.bias is not None:
            prev.bias.data[-scales.numel():].div_(scales)
    else:  # RMSNorm / LayerNorm: y = norm(x) * weight (+ bias)
        prev.weight.data.div_(scales)
        if getattr(prev, "bias", None) is not None:
            prev.bias.data.div_(scales)
    for fc in linears:
        fc.weight.data.mul_(scales.view(1, -1))


@torch.no_grad()
def second_moment(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """sum_t x_t x_t^T within each input group, [K/G, G, G] in float64, for x [..., K].

    What the clipping search needs of a linear's inputs: summed over calibration batches as they pass,
    it stands for every token at the memory of one [G, G] matrix a group (rows would take T x K)."""
    k = x.shape[-1]
    groups = x.reshape(-1, k // group_size, group_size).transpose(0, 1).float()  # [g, T, G]
    return (groups.transpose(1, 2) @ groups).double()


def scale_moment(moment: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The second moment of x / s from that of x: entry (i, j) of each group divided by s_i s_j."""
    inv = 1.0 / scales.double().view(moment.shape[0], -1)
    return moment * inv[:, :, None] * inv[:, None, :]


@torch.no_grad()
def search_clip(weight: torch.Tensor, moment: torch.Tensor, group_size: int, *, n_grid: int = N_GRID,
                max_shrink: float = 0.5, rows_per_batch: int = 1024) -> torch.Tensor:
    """Per output row and group, the weight range limit with the least output error [N, K/G].

    `moment` is the linear's inputs' second_moment (of x already divided by the AWQ scales). The error
    of a group's partial output over the tokens, sum_t (x_t . (q - w))^2, is (q - w)^T C (q - w) with C
    the group's [G, G] moment: AutoAWQ's criterion, which it evaluates on 512 sampled tokens because it
    forms a [rows, T, groups] tensor per candidate; the moment takes every calibration token at a
    fraction of that cost (on SmolLM2, g64, 32 x 512: held-out perplexity 1.1108 / 1.1074 / 1.1035x the
    baseline on three calibration subsets, against 1.1143 / 1.1136 / 1.1102x with 512 sampled tokens).
    """
    n, k = weight.shape
    groups = k // group_size
    moment = moment.float()  # a sum, not a mean: the argmin is the same
    best_all = []
    for start in range(0, n, rows_per_batch):
        w = weight[start:start + rows_per_batch].float().view(-1, groups, group_size)
        rows = w.shape[0]
        org_max = w.abs().amax(dim=-1)  # [rows, g]
        best = org_max.clone()
        best_err = torch.full_like(org_max, float("inf"))
        for i in range(int(max_shrink * n_grid)):
            limit = (org_max * (1 - i / n_grid))[..., None]
            clipped = torch.maximum(torch.minimum(w, limit), -limit)
            quantized = fake_quantize(clipped.view(rows, k), group_size).view(rows, groups, group_size)
            delta = (quantized - w).transpose(0, 1)  # [g, rows, G]
            err = ((delta @ moment) * delta).sum(-1).t()  # [rows, g]
            better = err < best_err
            best_err[better] = err[better]
            best[better] = limit[..., 0][better]
        best_all.append(best)
    return torch.cat(best_all, dim=0)


@torch.no_grad()
def apply_clip(linear: nn.Linear, max_val: torch.Tensor) -> None:
    """Clamp each (row, group) of the linear's weight to +-max_val, in place."""
    n, k = linear.weight.shape
    limit = max_val.to(linear.weight.dtype).view(n, -1, 1)
    w = linear.weight.data.view(n, limit.shape[1], -1)
    linear.weight.data = torch.maximum(torch.minimum(w, limit), -limit).view(n, k)


def _first(output):
    # attention modules return (output, weights); decoder layers of older transformers a tuple too
    return output[0] if isinstance(output, tuple) else output
