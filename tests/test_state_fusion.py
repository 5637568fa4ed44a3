"""State fusion (Spatial-Mamba's SASF + observation): the Triton kernels (CPU interpreter) against the PyTorch
reference for the output and every gradient, over maps smaller than the 11 x 11 reach, odd sizes and all dtypes; the
reference against closed forms."""
import os
import subprocess
import sys

import pytest
import torch

from mlla_mm.kernels.state_fusion import state_fusion
from mlla_mm.kernels.state_fusion.reference import state_fusion_reference
from mlla_mm.kernels.state_fusion.triton import state_fusion_triton
from tests.tolerances import assert_close

NAMES = ('h', 'kernel_3', 'kernel_3_1', 'kernel_3_2', 'alpha', 'C', 'D', 'u')


def make_inputs(batch, channels, height, width, dtype=torch.float32, seed=0):
    """h, C, u in ``dtype``; the kernels, alpha and D in float32 (the model's parameters). Random kernels and alpha:
    all-ones kernels (upstream's init) would hide a flipped or transposed tap."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, channels, height, width, generator=gen).to(dtype)
    kernels = [0.5 * torch.randn(channels, 1, 3, 3, generator=gen) for _ in range(3)]
    alpha = 1.0 + 0.5 * torch.randn(3, generator=gen)
    C = torch.randn(batch, 1, height, width, generator=gen).to(dtype)
    D = torch.randn(channels, generator=gen)
    u = torch.randn(batch, channels, height, width, generator=gen).to(dtype)
    return [t.requires_grad_() for t in (h, *kernels, alpha, C, D, u)]


def run(fn, inputs, grad_out):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*inputs)
    y.backward(grad_out)
    return [y] + [t.grad for t in inputs]


def check_against_reference(batch, channels, height, width, dtype, device='cpu'):
    inputs = [t.detach().to(device) for t in make_inputs(batch, channels, height, width, dtype)]
    grad_out = torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(1)).to(dtype)
    grad_out = grad_out.to(device)
    expected = run(state_fusion_reference, inputs, grad_out)
    actual = run(state_fusion_triton, inputs, grad_out)
    assert actual[0].dtype == dtype and actual[0].shape == (batch, channels, height, width)
    for name, a, e in zip(('y',) + NAMES, actual, expected):
        assert a.dtype == e.dtype, name
        assert_close(a, e, dtype, f'{name} at {batch}x{channels}x{height}x{width}')


# (batch, channels, H, W): several token blocks and splits, channel counts off the block of 8, maps narrower and
# shorter than the fusion's 11 x 11 reach (every pixel then has clamped taps), a single pixel, a single row/column.
SHAPES = [(1, 10, 9, 13), (1, 6, 5, 3), (2, 4, 1, 9), (1, 3, 1, 1),
          (1, 5, 13, 2), (2, 9, 11, 11), (2, 6, 12, 17), (1, 8, 23, 31)]


@pytest.mark.parametrize('shape', SHAPES[:3])
def test_kernel_matches_reference_fp32(shape):
    check_against_reference(*shape, torch.float32)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_kernel_matches_reference_low_precision(dtype):
    check_against_reference(1, 6, 5, 3, dtype)


@pytest.mark.slow
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('shape', SHAPES)
def test_kernel_matches_reference_sweep(shape, dtype):
    check_against_reference(*shape, dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_kernel_on_gpu_at_stage1_shapes(dtype):
    """Spatial-Mamba-T stage 1 at 224^2 (56 x 56 tokens, 128 inner channels), batch 2: the compiled kernels against
    the reference on the same device, output and every gradient."""
    check_against_reference(2, 128, 56, 56, dtype, device='cuda')


def test_reference_on_a_single_pixel_is_the_sum_of_all_taps():
    # Every tap of a 1 x 1 map reads the pixel itself: h' = (sum_k alpha_k sum K_k) h, and the gradients close too.
    h, k3, k31, k32, alpha, C, D, u = make_inputs(2, 3, 1, 1)
    y = state_fusion_reference(h, k3, k31, k32, alpha, C, D, u)
    gain = sum(a * k.sum((1, 2, 3)) for a, k in zip(alpha, (k3, k31, k32)))
    torch.testing.assert_close(y, gain[None, :, None, None] * h * C + D[:, None, None] * u)
    y.sum().backward()
    torch.testing.assert_close(h.grad, (gain[None, :, None, None] * C).expand_as(h).detach())
    torch.testing.assert_close(alpha.grad, torch.stack([(k.sum((1, 2, 3)) * (h * C).sum((0, 2, 3))).sum()
                                                        for k in (k3, k31, k32)]).detach())


def test_reference_border_gradient_accumulates_clamped_taps():
    # One row of 2 pixels, only kernel_3_2's left tap (offset -5) set: every output reads pixel 0, so pixel 0 gets
    # the whole gradient and pixel 1 none (zero padding would lose both).
    h, k3, k31, k32, alpha, C, D, u = make_inputs(1, 1, 1, 2)
    with torch.no_grad():
        for k in (k3, k31, k32):
            k.zero_()
        k32[0, 0, 1, 0] = 2.0
        alpha.copy_(torch.tensor([1.0, 1.0, 0.5]))
        C.fill_(1.0)
    for fn in (state_fusion_reference, state_fusion_triton):
        inputs = [t.detach().clone().requires_grad_() for t in (h, k3, k31, k32, alpha, C, D, u)]
        y = fn(*inputs)
        y.backward(torch.tensor([[[[3.0, 5.0]]]]))
        assert inputs[0].grad.flatten().tolist() == [8.0, 0.0], fn.__name__


def test_public_function_dispatches_and_casts_parameters():
    inputs = make_inputs(1, 4, 6, 7)
    half_params = [t.detach().half() if 1 <= i <= 4 or i == 6 else t.detach() for i, t in enumerate(inputs)]
    for backend in ('torch', 'triton'):
        y = state_fusion(*half_params, backend=backend)
        assert y.dtype == torch.float32 and y.is_contiguous()
        expected = state_fusion_reference(*[t.float() for t in half_params])
        assert_close(y, expected, torch.float32, f'{backend} backend')


def test_reference_stays_float32_under_autocast():
    # Autocast would run the convolutions in bfloat16; the op's math is float32 on both backends.
    inputs = [t.detach() for t in make_inputs(1, 4, 6, 7)]
    expected = state_fusion(*inputs, backend='torch')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        actual = state_fusion(*inputs, backend='torch')
    assert actual.dtype == torch.float32
    assert_close(actual, expected, torch.float32, 'under autocast')


def test_weight_changes_are_seen_at_once():
    # No cached merged kernel: a changed alpha changes the next call's output, on both backends.
    inputs = [t.detach() for t in make_inputs(1, 4, 6, 7)]
    for backend in ('torch', 'triton'):
        before = state_fusion(*inputs, backend=backend)
        changed = list(inputs)
        changed[4] = inputs[4] * 2.0
        after = state_fusion(*changed, backend=backend)
        assert_close(after, state_fusion_reference(*changed), torch.float32, f'{backend} after the change')
        assert not torch.allclose(after, before)


def test_bad_inputs_raise_clear_errors():
    h, k3, k31, k32, alpha, C, D, u = [t.detach() for t in make_inputs(1, 4, 6, 7)]
    with pytest.raises(ValueError, match=r'h must be \[batch, channels, H, W\], got shape \(4, 6, 7\)'):
        state_fusion(h[0], k3, k31, k32, alpha, C, D, u)
    with pytest.raises(ValueError, match=r'kernel_3_1 must be \[channels=4, 1, 3, 3\]'):
        state_fusion(h, k3, k31[:, :, :2], k32, alpha, C, D, u)
    with pytest.raises(ValueError, match=r'C must be \[batch=1, 1, H=6, W=7\], got shape \(1, 4, 6, 7\)'):
        state_fusion(h, k3, k31, k32, alpha, u, D, u)
    with pytest.raises(TypeError, match='u has dtype torch.int64'):
        state_fusion(h, k3, k31, k32, alpha, C, D, u.long())
    with pytest.raises(ValueError, match="backend='cuda' is not a backend"):
        state_fusion(h, k3, k31, k32, alpha, C, D, u, backend='cuda')


def test_triton_op_traces_as_custom_ops_without_recompiling():
    """torch.compile(fullgraph=True, dynamic=True) through aot_autograd: the forward and backward graphs hold the
    custom ops as single nodes, a second size reuses them, and compiled equals eager."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    torch._dynamo.reset()
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return make_boxed_func(graph_module.forward)

    def fused(*inputs):
        return state_fusion(*inputs, backend='triton')

    compiled = torch.compile(fused, backend=aot_autograd(fw_compiler=backend, bw_compiler=backend), fullgraph=True,
                             dynamic=True)
    # Sizes unlike the fixed 3s (kernels, alpha) and the channels: dynamo gives equal sizes one symbol at first.
    for height, width in ((5, 6), (7, 9)):
        inputs = make_inputs(1, 4, height, width)
        grad_out = torch.randn(1, 4, height, width)
        expected = run(fused, inputs, grad_out)
        actual = run(compiled, inputs, grad_out)
        for name, a, e in zip(('y',) + NAMES, actual, expected):
            assert_close(a, e, torch.float32, f'compiled vs eager {name}')
    assert len(graphs) == 2, f'{len(graphs)} forward/backward graphs for two sizes (recompiled)'
    assert 'mlla_mm.state_fusion_fwd' in graphs[0].code
    assert 'mlla_mm.state_fusion_bwd' in graphs[1].code


COMPILE_FOR_SM90 = """
import inspect
from triton import compile as triton_compile
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mlla_mm.kernels.state_fusion import triton as fusion

LOW_PRECISION = {'h_ptr', 'c_ptr', 'u_ptr', 'y_ptr', 'dy_ptr', 'dh_ptr', 'du_ptr'}
for kernel in (fusion._state_fusion_fwd_kernel, fusion._state_fusion_bwd_kernel,
               fusion._state_fusion_border_bwd_kernel):
    signature = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name.startswith('BLOCK_'):
            signature[name] = 'constexpr'
        elif name.endswith('_ptr'):
            signature[name] = '*bf16' if name in LOW_PRECISION else '*fp32'
        else:
            signature[name] = 'i32'  # runtime sizes
    compiled = triton_compile(ASTSource(kernel, signature, dict(BLOCK_D=8, BLOCK_L=128)),
                              target=GPUTarget('cuda', 90, 32))
    assert 'cubin' in compiled.asm, kernel.__name__
"""


@pytest.mark.slow
def test_kernels_compile_for_a_gpu():
    """Compile the three kernels to an sm_90 cubin (no GPU needed), with bf16 maps: catches constructs the GPU
    compiler rejects that the interpreter accepts. A subprocess, because this session sets TRITON_INTERPRET=1."""
    env = {**os.environ, 'TRITON_INTERPRET': '0'}
    result = subprocess.run([sys.executable, '-c', COMPILE_FOR_SM90], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_no_register_spills_at_spatial_mamba_shapes(tmp_path):
    """tools/kernel_report.py on Spatial-Mamba T's stages, fp32 / bf16 / fp16 maps (the launches as the model makes
    them, float32 states): ptxas for sm_90 reports no spills in any state-fusion kernel variant."""
    import json
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / 'report.json'
    result = subprocess.run([sys.executable, os.path.join(root, 'tools', 'kernel_report.py'), '--ops', 'state_fusion',
                             '--models', 'spatialmamba_t', '--sizes', '224', '--batches', '1',
                             '--dtypes', 'fp32,bf16,fp16', '--json', str(out)],
                            env={**os.environ, 'TRITON_INTERPRET': '0'}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert not report['skipped'], report['skipped']
    kernels = {(record['kernel'], tuple(record['pointer_dtypes'])) for record in report['variants']}
    for kernel in ('_state_fusion_fwd_kernel', '_state_fusion_bwd_kernel', '_state_fusion_border_bwd_kernel'):
        for pointers in (('*fp32',), ('*bf16', '*fp32'), ('*fp16', '*fp32')):
            assert (kernel, pointers) in kernels, (kernel, pointers, kernels)
    spilling = [(r['kernel'], r['pointer_dtypes'], r['spill_stores'], r['spill_loads']) for r in report['variants']
                if r['spill_stores'] or r['spill_loads']]
    assert not spilling, spilling
