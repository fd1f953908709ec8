"""Format constants: portable PRNG, codebooks, rotations, packing."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from multi_turboquant.formats import codebooks, packing, prng, transforms
from multi_turboquant.formats.turboquant import channel_permutation, default_outlier_order


def test_splitmix64_reference_outputs():
    # Reference values of SplitMix64 seeded with 0 (as in Vigna's splitmix64.c).
    rng = prng.SplitMix64(0)
    assert [rng.next_u64() for _ in range(3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_fnv1a64_reference():
    assert prng.fnv1a64("") == 0xCBF29CE484222325
    assert prng.fnv1a64("a") == 0xAF63DC4C8601EC8C


def test_portable_exp2_and_trig_match_libm():
    for x in (-10.0, -3.3, 0.0, 0.5, 1.999):
        assert prng.exp2(x) == pytest.approx(2.0**x, rel=1e-14)
    for a in (0.0, 0.1, 0.7, 1.2, math.pi / 2):
        c, s = prng.cos_sin(a)
        assert c == pytest.approx(math.cos(a), abs=1e-15) and s == pytest.approx(math.sin(a), abs=1e-15)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_codebook_tables_are_lloyd_max(bits):
    regenerated = codebooks.lloyd_max_gaussian(2**bits)
    table = codebooks.levels(bits).tolist()
    assert table == pytest.approx(regenerated, abs=2e-7)
    # the distortion figures quoted in the spec
    x = torch.randn(400_000, generator=torch.Generator().manual_seed(0))
    mse = ((codebooks.dequantize(codebooks.quantize(x, bits), bits) - x) ** 2).mean().item()
    assert mse == pytest.approx(codebooks.LLOYD_MAX_DISTORTION[bits], rel=0.03)


def test_quantize_ties_go_down_and_nearest():
    b = codebooks.boundaries(2)
    lv = codebooks.levels(2)
    codes = codebooks.quantize(torch.cat((b, lv)), 2)
    assert codes.tolist() == [0, 1, 2, 0, 1, 2, 3]


@pytest.mark.parametrize("n", [16, 32, 48, 64, 96, 128, 256])
def test_randomized_hadamard_is_orthonormal(n):
    t = transforms.RandomizedHadamard(f"test/{n}", n)
    eye = torch.eye(n)
    m = t.forward(eye)
    assert torch.allclose(m @ m.T, eye, atol=1e-5)
    assert torch.allclose(t.inverse(t.forward(eye)), eye, atol=1e-5)


@pytest.mark.parametrize("maker,k", [(transforms.quaternion_blocks, 4), (transforms.givens_blocks, 2)])
def test_block_rotations_are_orthonormal_and_distinct(maker, k):
    mats = maker("test", 16)
    assert mats.shape == (16, k, k)
    eye = torch.eye(k).expand(16, k, k)
    assert torch.allclose(mats @ mats.transpose(1, 2), eye, atol=1e-6)
    assert torch.allclose(torch.linalg.det(mats), torch.ones(16), atol=1e-5)
    assert not torch.allclose(mats[0], mats[1])  # a rotation per block, not one shared constant
    rot = transforms.BlockRotation(mats)
    x = torch.randn(5, 16 * k)
    assert torch.allclose(rot.inverse(rot.forward(x)), x, atol=1e-5)


def test_tree_sum_matches_sum():
    x = torch.randn(7, 96)
    assert torch.allclose(transforms.tree_sum(x), x.sum(-1, keepdim=True), atol=1e-4)


def test_power_of_two_blocks():
    assert transforms.power_of_two_blocks(96) == (64, 32)
    assert transforms.power_of_two_blocks(48) == (32, 16)
    assert transforms.power_of_two_blocks(128) == (128,)


def test_channel_permutation():
    assert default_outlier_order(16) == [4, 5, 6, 7, 12, 13, 14, 15]
    perm = channel_permutation(16, [0, 9])
    assert perm[:8] == [0, 9, 4, 5, 6, 7, 12, 13]
    assert sorted(perm) == list(range(16))
    assert channel_permutation(16, None)[:8] == default_outlier_order(16)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), groups=st.integers(1, 6), rows=st.integers(0, 4), data=st.data())
def test_pack_unpack_roundtrip(bits, groups, rows, data):
    n = 8 * groups
    codes = torch.tensor(data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=n * rows, max_size=n * rows)),
                         dtype=torch.uint8).reshape(rows, n)
    packed = packing.pack(codes, bits)
    assert packed.shape == (rows, packing.packed_bytes(n, bits))
    assert torch.equal(packing.unpack(packed, n, bits), codes)


def test_pack_bit_order():
    # 3-bit codes: low two bits in a 2-bit plane (4 per byte, LSB first), high bit in a 1-bit plane.
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]], dtype=torch.uint8)
    packed = packing.pack(codes, 3).tolist()[0]
    assert packed == [0b00111001, 0b00111001, 0b01111000]
    assert packing.plane_widths(3) == (2, 1) and packing.plane_widths(5) == (4, 1)
    with pytest.raises(ValueError, match="do not fill whole bytes"):
        packing.packed_bytes(6, 3)
    with pytest.raises(ValueError, match="1..8 bits"):
        packing.plane_widths(9)


def test_bf16_sqrt_is_correctly_rounded():
    from multi_turboquant.formats.base import bf16_sqrt

    s = torch.cat((torch.rand(200_000, generator=torch.Generator().manual_seed(3)) * 1000,
                   torch.tensor([0.0, 1.0, 4.0, 2.0, 1e-30, 1e30, 454.2226867675781])))
    got = bf16_sqrt(s).double()
    root = s.double().sqrt()
    # the nearest bf16: neighbours of the result are never closer to the true root
    step = torch.tensor([2.0 ** (e - 7) for e in torch.frexp(got.float()).exponent.sub(1).tolist()], dtype=torch.float64)
    err = (got - root).abs()
    assert (err <= step / 2 + 1e-12 * root).all()
    assert got[-1].item() == 21.375  # a case where float32 rounding first would tie and go down


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_exact_quantizer_matches_the_readable_one(bits):
    """quantize_scaled (no sqrt/division) = nearest level of y*sqrt(n/S)/c, away from float ties."""
    y = torch.randn(500, 64, generator=torch.Generator().manual_seed(bits))
    sq = transforms.tree_sum(y * y)
    for candidate, c in enumerate(codebooks.SCALE_CANDIDATES):
        u = (y.double() * torch.sqrt(64 / sq.double()) / c).float()
        exact = codebooks.quantize_scaled(y, sq, bits, candidate)
        readable = codebooks.quantize(u, bits)
        near_tie = (u.unsqueeze(-1) - codebooks.boundaries(bits)).abs().amin(-1) < 1e-5
        assert torch.equal(exact[~near_tie], readable[~near_tie])
        assert near_tie.float().mean() < 1e-3
