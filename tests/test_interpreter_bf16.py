"""The test harness's Triton interpreter does bf16 as a GPU does (tests/conftest.py): fp32 -> bf16 casts round to
nearest, ties to even, and tl.dot multiplies bf16 operands by value."""
import torch
import triton
import triton.language as tl


@triton.jit
def _cast_and_dot_kernel(x_ptr, a_ptr, b_ptr, cast_ptr, dot_ptr, N: tl.constexpr):
    rows = tl.arange(0, N)
    offsets = rows[:, None] * N + rows[None, :]
    tl.store(cast_ptr + offsets, tl.load(x_ptr + offsets).to(tl.bfloat16))
    product = tl.dot(tl.load(a_ptr + offsets).to(tl.bfloat16), tl.load(b_ptr + offsets).to(tl.bfloat16))
    tl.store(dot_ptr + offsets, product)


def test_bf16_casts_round_to_nearest_even_and_dots_multiply_values():
    """Exact ties both ways, carries into the exponent (1.99999 -> 2), negatives, zero, tiny and large values, NaN,
    infinities and random values at several scales; the product of bf16 tiles equals torch's in fp32."""
    ulp = 2.0 ** -7
    special = torch.tensor([0.0, -0.0, 1 + ulp / 2, 1 + 1.5 * ulp, -(1 + ulp / 2), -(1 + 1.5 * ulp), 1.99999,
                            3.99999, -1.99999, 1 + ulp / 2 + 2 ** -20, 1e-30, 3e38, 1 + ulp / 4, 1 + 3 * ulp / 4,
                            float('inf'), float('-inf')], dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([special, torch.randn(16 * 15, generator=gen) * torch.logspace(-3, 3, 16 * 15)]).view(16, 16)
    a, b = torch.randn(2, 16, 16, generator=gen)
    cast, dot = torch.empty(16, 16, dtype=torch.bfloat16), torch.empty(16, 16)
    _cast_and_dot_kernel[(1,)](x, a, b, cast, dot, N=16)
    assert torch.equal(cast.view(torch.int16), x.to(torch.bfloat16).view(torch.int16))
    torch.testing.assert_close(dot, a.bfloat16().float() @ b.bfloat16().float(), rtol=1e-6, atol=1e-6)

    x[0, 0] = float('nan')
    _cast_and_dot_kernel[(1,)](x, a, b, cast, dot, N=16)
    assert cast[0, 0].isnan()
