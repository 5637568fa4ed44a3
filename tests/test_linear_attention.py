"""The fused Triton linear attention against its PyTorch reference (CPU, TRITON_INTERPRET=1), and the op's dispatch.

Low-precision runs are compared with the fp32 reference evaluated on the same low-precision inputs, with the tolerance
of the input dtype from tests/tolerances.py.
"""
import pytest
import torch

import mlla_mm
from mlla_mm.kernels import backends_used, linear_attention, select_backend
from mlla_mm.kernels.linear_attention import triton as la_triton
from mlla_mm.kernels.linear_attention.reference import linear_attention_reference
from mlla_mm.kernels.linear_attention.triton import linear_attention_triton

from .tolerances import assert_close

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# (batch, height, width, heads, head dim): N = height * width is rarely a multiple of the 64/128-token tiles;
# odd and degenerate grids; heads whose channel pairs mix row and column frequencies (e.g. 3 heads of 32);
# head dims that need padding to a power of two (24, 48).
SHAPES = [
    (1, 7, 9, 2, 32),
    (2, 7, 9, 2, 32),
    (1, 1, 13, 1, 32),
    (3, 5, 1, 2, 16),
    (1, 13, 11, 1, 16),
    (2, 9, 7, 4, 16),
    (1, 8, 8, 1, 64),
    (1, 11, 13, 2, 64),
    (2, 1, 1, 2, 32),
    (1, 3, 43, 3, 32),
    (3, 6, 10, 1, 32),
    (1, 10, 20, 2, 32),
    (2, 12, 16, 1, 64),
    (1, 16, 12, 4, 16),
    (1, 2, 65, 1, 32),
    (2, 5, 13, 3, 16),
    (1, 17, 1, 2, 32),
    (1, 4, 4, 2, 32),
    (3, 3, 3, 3, 64),
    (1, 9, 14, 2, 48),
    (2, 7, 7, 1, 24),
    (1, 1, 1, 1, 16),
    (1, 15, 13, 2, 32),
]


@pytest.fixture
def small_chunks(monkeypatch):
    """Split the token reduction into chunks of one tile, so that small test grids run the multi-chunk path."""
    monkeypatch.setattr(la_triton, 'MIN_CHUNK', 16)


def make_inputs(batch, height, width, heads, dim, dtype, layout, seed=0):
    """q, k, v as the model passes them ('qk_views': q, k are views of one [B, N, 2C] projection, v is [B, N, C]),
    or as head-first tensors transposed to [B, N, H, D] ('head_first': stride 1 on D, D on N)."""
    gen = torch.Generator().manual_seed(seed)
    tokens, channels = height * width, heads * dim
    if layout == 'qk_views':
        qk = torch.randn(batch, tokens, 2 * channels, generator=gen).to(dtype)
        q = qk[..., :channels].view(batch, tokens, heads, dim)
        k = qk[..., channels:].view(batch, tokens, heads, dim)
        v = torch.randn(batch, tokens, channels, generator=gen).to(dtype).view(batch, tokens, heads, dim)
    else:
        q, k, v = (torch.randn(batch, heads, tokens, dim, generator=gen).to(dtype).transpose(1, 2) for _ in range(3))
    grad_out = torch.randn(batch, tokens, heads, dim, generator=gen).to(dtype)
    return q, k, v, grad_out


def run_with_grads(fn, q, k, v, grad_out, hw):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, hw)
    out.backward(grad_out)
    return out, [t.grad for t in leaves]


def check_against_reference(shape, dtype, layout):
    batch, height, width, heads, dim = shape
    q, k, v, grad_out = make_inputs(batch, height, width, heads, dim, dtype, layout)
    out, grads = run_with_grads(linear_attention_triton, q, k, v, grad_out, (height, width))
    assert out.dtype == dtype and out.shape == q.shape and out.is_contiguous()
    assert all(g.dtype == dtype and g.shape == q.shape for g in grads)
    ref_out, ref_grads = run_with_grads(linear_attention_reference, q.float(), k.float(), v.float(),
                                        grad_out.float(), (height, width))
    assert_close(out, ref_out, dtype, f'out {shape}')
    for name, grad, ref_grad in zip(('dq', 'dk', 'dv'), grads, ref_grads):
        assert_close(grad, ref_grad, dtype, f'{name} {shape}')


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('index', range(len(SHAPES)), ids=lambda i: 'BHWhd=' + 'x'.join(map(str, SHAPES[i])))
def test_kernel_matches_reference(small_chunks, index, dtype):
    check_against_reference(SHAPES[index], dtype, 'qk_views' if index % 2 == 0 else 'head_first')


def test_kernel_single_chunk_default_launch():
    """The default chunking (one chunk below MIN_CHUNK tokens) and a grid with rows in the thousands, whose RoPE
    angles need the in-kernel range reduction."""
    check_against_reference((1, 1200, 1, 1, 16), torch.float32, 'qk_views')


@pytest.mark.parametrize('tokens, batch_heads', [(67200, 2 * 2), (65536, 1 * 2), (3136, 128 * 2), (100, 1)])
def test_chunking_fills_an_h100(monkeypatch, tokens, batch_heads):
    monkeypatch.setattr(la_triton, '_sm_count', lambda device: 132)
    chunk_tokens, chunks = la_triton._chunking(tokens, batch_heads, 64, torch.device('cpu'))
    assert chunk_tokens % 64 == 0 and (chunks - 1) * chunk_tokens < tokens <= chunks * chunk_tokens
    # Either about PROGRAMS_PER_SM programs per SM, or chunks as small as allowed.
    assert chunks * batch_heads >= 0.9 * la_triton.PROGRAMS_PER_SM * 132 or chunk_tokens == la_triton.MIN_CHUNK


def test_kernel_rejects_unsupported_head_dims():
    q = torch.randn(1, 4, 4, 3)  # H*D = 12 passes the RoPE check, but the pairs would straddle heads
    with pytest.raises(ValueError, match=r'head dim D=3 .*\(1, 4, 4, 3\)'):
        linear_attention_triton(q, q, q, (2, 2))
    q = torch.randn(1, 4, 1, 256)
    with pytest.raises(ValueError, match='head dim D=256'):
        linear_attention_triton(q, q, q, (2, 2))


# ----------------------------------------------------------------------------------------------------------------
# Dispatch (kernels/backend.py through the public op)

def small_qkv(dtype=torch.float32):
    q, k, v, _ = make_inputs(1, 3, 5, 2, 16, dtype, 'qk_views')
    return q, k, v


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    with pytest.raises(RuntimeError, match=r"backend='triton' cannot run: .*cpu.*TRITON_INTERPRET=1"):
        select_backend('linear_attention', 'triton', torch.device('cpu'))
    with pytest.raises(RuntimeError, match="linear_attention: backend='triton' cannot run"):
        linear_attention(*small_qkv(), (3, 5), backend='triton')


def test_auto_uses_the_reference_on_cpu_even_under_the_interpreter(monkeypatch):
    monkeypatch.delenv('MLLA_MM_STRICT', raising=False)
    assert select_backend('linear_attention', 'auto', torch.device('cpu')) == 'torch'
    q, k, v = small_qkv()
    torch.testing.assert_close(linear_attention(q, k, v, (3, 5), backend='auto'),
                               linear_attention_reference(q, k, v, (3, 5)), rtol=0, atol=0)


def test_strict_mode_makes_auto_raise_on_cpu(monkeypatch):
    monkeypatch.setenv('MLLA_MM_STRICT', '1')
    with pytest.raises(RuntimeError, match='MLLA_MM_STRICT=1 forbids the fallback.*cpu'):
        linear_attention(*small_qkv(), (3, 5), backend='auto')
    # An explicit choice is not a fallback.
    assert select_backend('linear_attention', 'torch', torch.device('cpu')) == 'torch'


def test_environment_sets_the_default_backend(monkeypatch):
    monkeypatch.delenv('MLLA_MM_STRICT', raising=False)
    q, k, v = small_qkv()
    monkeypatch.setenv('MLLA_MM_BACKEND', 'triton')
    assert select_backend('linear_attention', None, torch.device('cpu')) == 'triton'
    out = linear_attention(q, k, v, (3, 5))
    assert 'triton' in backends_used()['linear_attention']
    assert_close(out, linear_attention_reference(q, k, v, (3, 5)), torch.float32, 'out, MLLA_MM_BACKEND=triton')
    monkeypatch.setenv('MLLA_MM_BACKEND', 'torch')
    assert select_backend('linear_attention', None, torch.device('cpu')) == 'torch'
    monkeypatch.setenv('MLLA_MM_BACKEND', 'cuda')
    with pytest.raises(ValueError, match="MLLA_MM_BACKEND='cuda' is not a backend"):
        linear_attention(q, k, v, (3, 5))


@pytest.mark.parametrize('case, error, match', [
    ('rank', ValueError, r'q must be \[B, N, H, D\], got shape \(15, 2, 16\)'),
    ('dtype', TypeError, 'q has dtype torch.float64'),
    ('shapes', ValueError, 'q, k, v shapes differ'),
    ('mixed dtypes', TypeError, 'q, k, v dtypes differ'),
    ('hw', ValueError, r'hw=\(4, 4\) gives 16 tokens but N=15'),
    ('rope channels', ValueError, 'H\\*D divisible by 4'),
    ('backend', ValueError, "backend='cuda' is not a backend"),
])
def test_bad_inputs_raise_clear_errors(case, error, match):
    q, k, v = small_qkv()
    hw, backend = (3, 5), 'triton'
    if case == 'rank':
        q = q[0]
    elif case == 'dtype':
        q = q.double()
    elif case == 'shapes':
        k = k[:, :10]
    elif case == 'mixed dtypes':
        v = v.half()
    elif case == 'hw':
        hw = (4, 4)
    elif case == 'rope channels':
        q, k, v = (torch.randn(1, 15, 1, 2) for _ in range(3))
    else:
        backend = 'cuda'
    with pytest.raises(error, match=match):
        linear_attention(q, k, v, hw, backend=backend)


# ----------------------------------------------------------------------------------------------------------------
# The tiny MLLA on the Triton backend against the same weights on the PyTorch backend

def test_mlla_tiny_triton_matches_torch(monkeypatch):
    kernel_calls = []
    forward = la_triton._forward
    monkeypatch.setattr(la_triton, '_forward', lambda *args: kernel_calls.append(args[0].shape) or forward(*args))
    torch.manual_seed(0)
    models = {backend: mlla_mm.create_model('mlla_test', backend=backend).eval() for backend in ('torch', 'triton')}
    models['triton'].load_state_dict(models['torch'].state_dict())
    image = torch.randn(1, 3, 64, 96)
    results = {}
    for backend, model in models.items():
        out = model(image)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results[backend] = out, {name: p.grad for name, p in model.named_parameters()}
    assert len(kernel_calls) == 4, f'one block per stage should run the kernel, got calls for {kernel_calls}'
    assert_close(results['triton'][0], results['torch'][0], torch.float32, 'mlla_test output')
    ref_grads = results['torch'][1]
    assert ref_grads and all(g is not None for g in ref_grads.values())
    for name, grad in results['triton'][1].items():
        assert_close(grad, ref_grads[name], torch.float32, f'grad of {name}')
