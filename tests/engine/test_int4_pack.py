"""The int4 layout (engine/quant/int4_pack.py) against AutoAWQ's definition, written out by hand."""
from __future__ import annotations

import pytest
import torch

from engine.quant.int4_pack import (dequantize_awq, pack_awq, pack_columns, quantize_groups, unpack_columns)


def test_nibble_order_is_awqs_interleave():
    # columns 0..7 holding codes 0..7: nibble i must hold column (0, 2, 4, 6, 1, 3, 5, 7)[i]
    packed = pack_columns(torch.arange(8, dtype=torch.int32)[None]).item() & 0xFFFFFFFF
    assert packed == 0x75316420


def test_high_codes_keep_their_bits_in_int32():
    codes = torch.full((2, 16), 15, dtype=torch.int32)
    packed = pack_columns(codes)
    assert packed.dtype == torch.int32 and (packed == -1).all()
    assert torch.equal(unpack_columns(packed), codes)


def test_pack_unpack_round_trip():
    codes = torch.randint(0, 16, (7, 40), dtype=torch.int32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(unpack_columns(pack_columns(codes)), codes)


def test_rtn_matches_autoawq_formula_by_hand():
    w = torch.tensor([[-1.0, 0.0, 0.5, 2.0]])  # one output column, one group of 4
    codes, zeros, scales = quantize_groups(w, 4)
    step = 3.0 / 15
    assert scales.item() == pytest.approx(step)
    assert zeros.item() == round(1.0 / step)  # -round(min / step) = 5
    expected = [min(15, max(0, round(v / step) + 5)) for v in (-1.0, 0.0, 0.5, 2.0)]
    assert codes.tolist() == [expected]


def test_dequantized_error_is_within_half_a_step():
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(0))
    qweight, qzeros, scales = pack_awq(w, 64)
    assert qweight.shape == (256, 4) and qzeros.shape == (4, 4) and scales.shape == (4, 32)
    err = (dequantize_awq(qweight, qzeros, scales, 64) - w).abs()
    step = scales.float().t().repeat_interleave(64, dim=1)
    assert (err <= step * 0.5 + 1e-3).all()


@pytest.mark.parametrize("k, g", [(100, 64), (128, 0), (128, -8)])
def test_group_size_must_divide_the_input(k, g):
    with pytest.raises(ValueError, match="group size"):
        pack_awq(torch.randn(8, k), g)


def test_output_size_must_be_a_multiple_of_eight():
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_awq(torch.randn(12, 128), 128)
