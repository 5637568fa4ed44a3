"""Selective scan: the Triton kernel (CPU interpreter) against the PyTorch reference, and the reference against a
sequential loop."""
import os

import pytest
import torch
import torch.nn.functional as F

from mlla_mm.kernels.selective_scan import selective_scan
from mlla_mm.kernels.selective_scan.reference import selective_scan_reference
from mlla_mm.kernels.selective_scan.triton import launch_grid, selective_scan_triton
from tests.tolerances import assert_close

NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')


def make_inputs(batch, dim, groups, n_state, length, dtype=torch.float32, seed=0, softplus=True):
    """u, delta, B, C in ``dtype``; A, D, delta_bias in float32 (as VMamba calls the op). Time steps around
    softplus(-3) ~ 0.05 and |A| in ~(0.5, 2) keep decays near 0.9-0.97, so the state crosses chunk boundaries.
    Without ``softplus`` the op takes delta as the time step itself, so delta is made positive here."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, length, generator=gen).to(dtype)
    delta = 0.5 * torch.randn(batch, dim, length, generator=gen) - 3.0
    delta = (delta if softplus else F.softplus(delta)).to(dtype)
    A = -torch.exp(0.4 * torch.randn(dim, n_state, generator=gen))
    B = torch.randn(batch, groups, n_state, length, generator=gen).to(dtype)
    C = torch.randn(batch, groups, n_state, length, generator=gen).to(dtype)
    D = torch.randn(dim, generator=gen)
    delta_bias = 0.5 * torch.randn(dim, generator=gen)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, delta_bias)]


def seeded_randn(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def sequential_scan(u, delta, A, B, C, D, delta_bias, delta_softplus):
    """The S6 recurrence token by token (float32): the definition the reference must match."""
    batch, dim, length = u.shape
    repeat = dim // B.shape[1]
    dt = delta + delta_bias[:, None]
    dt = F.softplus(dt) if delta_softplus else dt
    B, C = B.repeat_interleave(repeat, 1), C.repeat_interleave(repeat, 1)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, dim=-1)


@pytest.mark.parametrize('batch,dim,groups,n_state,length,softplus', [
    (2, 6, 3, 4, 1, True), (1, 4, 1, 1, 63, True), (2, 4, 2, 3, 65, False), (1, 8, 4, 16, 200, True)])
def test_reference_matches_sequential_loop(batch, dim, groups, n_state, length, softplus):
    # length 65 and 200 cross the reference's 64-token chunks.
    inputs = [t.detach() for t in make_inputs(batch, dim, groups, n_state, length, seed=1, softplus=softplus)]
    expected = sequential_scan(*inputs, softplus)
    actual = selective_scan_reference(*inputs, delta_softplus=softplus)
    assert_close(actual, expected, torch.float32, 'reference vs sequential loop')


def run_and_grad(fn, inputs, grad_out):
    out = fn(*inputs)
    grads = torch.autograd.grad(out, [t for t in inputs if t is not None], grad_out.to(out.dtype))
    return out, grads


# Awkward shapes: L not a multiple of the chunk, several chunks, d_state 1 / 3 (not a power of 2) / 16, groups 1-2,
# 1 / 2 / 4 / 8 channels per program (the largest power of 2 up to 8 dividing the group width).
SHAPES = [
    dict(batch=2, dim=6, groups=2, n_state=1, length=37, block_l=16),
    dict(batch=1, dim=4, groups=2, n_state=3, length=50, block_l=32),
    dict(batch=1, dim=4, groups=1, n_state=16, length=19, block_l=16),
    dict(batch=1, dim=8, groups=2, n_state=1, length=300, block_l=256),  # the GPU default chunk for d_state 1
]


@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(str(v) for v in s.values()))
def test_kernel_matches_reference_fp32(shape):
    block_l = shape.pop('block_l')
    inputs = make_inputs(**shape)
    grad_out = seeded_randn(shape['batch'], shape['dim'], shape['length'])
    expected, expected_grads = run_and_grad(
        lambda *t: selective_scan_reference(*t, delta_softplus=True), inputs, grad_out)
    actual, actual_grads = run_and_grad(
        lambda *t: selective_scan_triton(*t, delta_softplus=True, block_l=block_l), inputs, grad_out)
    assert_close(actual, expected, torch.float32, 'y')
    for name, got, want in zip(NAMES, actual_grads, expected_grads):
        assert_close(got, want, torch.float32, f'd{name}')


@pytest.mark.parametrize('dtype,output_fp32', [
    (torch.float16, False), (torch.float16, True), (torch.bfloat16, False), (torch.bfloat16, True)])
def test_kernel_low_precision_matches_fp32_reference(dtype, output_fp32):
    """16-bit u, delta, B, C: the kernel keeps a float32 state, so it must match the float32 reference on the same
    (rounded) inputs within the tolerance of the input dtype, for the output and every gradient."""
    inputs = make_inputs(2, 6, 3, 2, 45, dtype=dtype)
    reference_inputs = [t.detach().float().requires_grad_() for t in inputs]
    grad_out = seeded_randn(2, 6, 45).to(torch.float32 if output_fp32 else dtype)
    expected, expected_grads = run_and_grad(
        lambda *t: selective_scan_reference(*t, delta_softplus=True), reference_inputs, grad_out)
    actual, actual_grads = run_and_grad(
        lambda *t: selective_scan_triton(*t, delta_softplus=True, output_fp32=output_fp32, block_l=16),
        inputs, grad_out)
    assert actual.dtype == (torch.float32 if output_fp32 else dtype)
    assert_close(actual, expected, dtype, 'y')
    for name, got, want, given in zip(NAMES, actual_grads, expected_grads, inputs):
        assert got.dtype == given.dtype, f'd{name} is {got.dtype}, its input {given.dtype}'
        assert_close(got, want, dtype, f'd{name}')


def test_kernel_without_skip_bias_and_softplus():
    u, delta, A, B, C, _, _ = make_inputs(1, 4, 2, 2, 40, softplus=False)
    inputs = (u, delta, A, B, C)
    grad_out = seeded_randn(1, 4, 40)
    expected, expected_grads = run_and_grad(selective_scan_reference, inputs, grad_out)
    actual, actual_grads = run_and_grad(lambda *t: selective_scan_triton(*t, block_l=16), inputs, grad_out)
    assert_close(actual, expected, torch.float32, 'y')
    for name, got, want in zip(NAMES, actual_grads, expected_grads):
        assert_close(got, want, torch.float32, f'd{name}')


def test_public_function_dispatches_and_casts_parameters():
    u, delta, A, B, C, D, delta_bias = (t.detach() for t in make_inputs(1, 4, 2, 1, 30))
    A, D, delta_bias = A.half(), D.half(), delta_bias.half()
    expected = selective_scan_reference(u, delta, A.float(), B, C, D.float(), delta_bias.float(), True)
    for backend in ('torch', 'triton'):
        # 16-bit parameters (e.g. a model.half()) are used in float32 on both backends
        actual = selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus=True, backend=backend)
        assert actual.dtype == torch.float32 and actual.is_contiguous()
        assert_close(actual, expected, torch.float32, f'y ({backend})')


def test_bad_inputs_raise_clear_errors():
    u, delta, A, B, C, D, delta_bias = (t.detach() for t in make_inputs(1, 4, 2, 1, 10))
    with pytest.raises(ValueError, match=r'u must be \[batch, dim, L\]'):
        selective_scan(u[0], delta, A, B, C)
    with pytest.raises(ValueError, match='delta must have the shape of u'):
        selective_scan(u, delta[..., :5], A, B, C)
    with pytest.raises(ValueError, match=r'B must be \[batch=1, G, N=1, L=10\]'):
        selective_scan(u, delta, A, B[..., :5], C)
    with pytest.raises(ValueError, match='not divisible by the B/C groups G=3'):
        selective_scan(u, delta, A, torch.randn(1, 3, 1, 10), torch.randn(1, 3, 1, 10))
    with pytest.raises(TypeError, match='u, delta, B, C must share a dtype'):
        selective_scan(u.half(), delta, A, B, C)
    with pytest.raises(TypeError, match='int64'):
        selective_scan(u.long(), delta, A, B, C)
    with pytest.raises(ValueError, match='D is on meta but u is on cpu'):
        selective_scan(u, delta, A, B, C, D.to('meta'))
    with pytest.raises(ValueError, match='supports d_state 1..16, got 17'):
        selective_scan(u, delta, torch.randn(4, 17), torch.randn(1, 2, 17, 10), torch.randn(1, 2, 17, 10),
                       backend='triton')




def test_gradients_are_bit_identical_across_runs():
    """Deterministic reductions: two backward passes give the same bits (on a GPU too: see the cuda test)."""
    inputs = make_inputs(1, 8, 2, 2, 70)
    grad_out = seeded_randn(1, 8, 70)
    runs = [run_and_grad(lambda *t: selective_scan_triton(*t, delta_softplus=True, block_l=16), inputs, grad_out)
            for _ in range(2)]
    for name, first, second in zip(('y',) + NAMES, (runs[0][0],) + runs[0][1], (runs[1][0],) + runs[1][1]):
        assert torch.equal(first, second), f'{name} differs between two runs'


def test_kernels_have_no_atomics():
    """Float atomics make dB/dC depend on the arrival order on a GPU (the interpreter runs programs in order, so
    the test above cannot see them): the kernels' source must not use any."""
    import inspect
    from mlla_mm.kernels.selective_scan import triton as scan_triton
    source = inspect.getsource(scan_triton)
    assert 'atomic_' not in source


# VMamba stage-1 scans (4 routes x d_inner channels, B/C groups 4, d_state 1): (d_inner, height, width).
STAGE1 = {'VMamba-T 1024^2': (96, 256, 256), 'VMamba-T 2048^2': (96, 512, 512), 'VMamba-B 1024^2': (256, 256, 256)}


@pytest.mark.parametrize('model', STAGE1)
def test_forward_fills_the_gpu_at_batch_1(model):
    """At least 2 programs per SM of an H100 (132 SMs) from 1024 x 1024 up, at batch 1: the grid grows with L."""
    d_inner, height, width = STAGE1[model]
    programs, _, n_chunks = launch_grid(1, 4 * d_inner, 4, 1, height * width, interpreted=False)
    assert programs >= 264, f'{model}: {programs} programs'
    assert n_chunks > 1


def test_grid_counts_chunks_and_channel_blocks():
    programs, pass_programs, n_chunks = launch_grid(2, 384, 4, 1, 3136, interpreted=False)
    assert n_chunks == 13  # ceil(3136 / 256) at d_state 1, 8 channels per program
    assert programs == 2 * 384 // 8 * 13
    assert pass_programs == 2 * 384 // 16


requires_compiled_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get('TRITON_INTERPRET') == '1',
    reason='needs a CUDA GPU and TRITON_INTERPRET=0 (the compiled kernels)')


@pytest.mark.cuda
@requires_compiled_cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('shape', [(2, 384, 4, 1, 56 * 56), (1, 3072, 4, 1, 25 * 38), (1, 64, 2, 16, 1000)],
                         ids=['vmamba_t_s1_224', 'vmamba_b_s4_800x1216', 'd_state16'])
def test_cuda_kernel_matches_reference(shape, dtype):
    """The compiled kernels at real VMamba shapes: output and every gradient against the float32 reference on the
    same (rounded) inputs; gradients bit-identical across two runs."""
    batch, dim, groups, n_state, length = shape
    inputs = [t.detach().cuda().requires_grad_() for t in make_inputs(batch, dim, groups, n_state, length, dtype)]
    reference_inputs = [t.detach().float().requires_grad_() for t in inputs]
    grad_out = seeded_randn(batch, dim, length).cuda()  # the reference runs on the GPU too, in float32
    expected, expected_grads = run_and_grad(
        lambda *t: selective_scan_reference(*t, delta_softplus=True), reference_inputs, grad_out)
    actual, actual_grads = run_and_grad(
        lambda *t: selective_scan(*t, delta_softplus=True, output_fp32=True, backend='triton'), inputs, grad_out)
    assert_close(actual, expected, dtype, 'y')
    for name, got, want in zip(NAMES, actual_grads, expected_grads):
        assert_close(got, want, dtype, f'd{name}')
    _, again = run_and_grad(
        lambda *t: selective_scan(*t, delta_softplus=True, output_fp32=True, backend='triton'), inputs, grad_out)
    for name, first, second in zip(NAMES, actual_grads, again):
        assert torch.equal(first, second), f'd{name} differs between two runs'
