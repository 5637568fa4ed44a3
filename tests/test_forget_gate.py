"""Forget-gate op: the chunked reference against the per-token recurrence and a dense float64 mask, and the Triton
kernels (CPU interpreter) against the reference for the output and every gradient, per direction and dtype."""
import pytest
import torch

from mlla_mm.kernels.forget_gate import forget_gate_attention
from mlla_mm.kernels.forget_gate.reference import chunked_forget_gate, forget_gate_reference, naive_recurrence
from mlla_mm.kernels.forget_gate.triton import forget_gate_triton
from tests.tolerances import assert_close

NAMES = ('q', 'k', 'v', 'g')
# Per-token forget exp(g): weak ~0.99 (the state spans many chunks), the paper's shallow-layer ~0.2 (g ~ -1.6), and
# strong ~e^-20 (a factored exp(b_i) exp(-b_j) would overflow float32 within two tokens).
DECAYS = {'weak': 0.01, 'paper': 1.6, 'strong': 20.0}


def make_inputs(batch, tokens, heads, dim_k, dim_v, decay, dtype=torch.float32, g_dtype=torch.float32, seed=0):
    """q, k, v in ``dtype``; g in ``g_dtype``, uniform in [-2 * decay, 0] (mean -decay) per key channel."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, tokens, heads, dim_k, generator=gen).to(dtype)
    k = torch.randn(batch, tokens, heads, dim_k, generator=gen).to(dtype)
    v = torch.randn(batch, tokens, heads, dim_v, generator=gen).to(dtype)
    g = (-2 * DECAYS[decay] * torch.rand(batch, tokens, heads, dim_k, generator=gen)).to(g_dtype)
    return [t.requires_grad_() for t in (q, k, v, g)]


def run_and_grad(fn, inputs, grad_out):
    out = fn(*inputs)
    return out, torch.autograd.grad(out, inputs, grad_out.to(out.dtype))


def dense_masked_attention(q, k, v, g, scale, direction, hw):
    """The op as o = scale * ((Q K^T) masked by M) V in float64, with M from a global float64 cumsum of g along each
    route (fine at test sizes): the definition of the directions, independent of the route stacking."""
    q, k, v, g = (t.detach().double() for t in (q, k, v, g))
    tokens = q.shape[1]

    def mask(order, symmetric):
        cum = torch.empty_like(g)
        cum[:, order] = g[:, order].cumsum(1)
        diff = cum[:, :, None] - cum[:, None, :]                       # [B, i, j, H, Dk]: b_i - b_j
        position = torch.empty(tokens, dtype=torch.long)
        position[order] = torch.arange(tokens)
        later = (position[:, None] >= position[None, :])[None, :, :, None, None]
        return torch.exp(-diff.abs()) if symmetric else torch.where(later, diff, -float('inf')).exp()

    rows = torch.arange(tokens)
    if direction == 'causal':
        masks = mask(rows, False)
    elif direction == 'bidirectional':
        masks = mask(rows, True)
    else:
        height, width = hw
        columns = rows.view(height, width).t().flatten()
        masks = mask(rows, True) + mask(columns, True) - torch.eye(tokens, dtype=q.dtype)[None, :, :, None, None]
    return scale * torch.einsum('bihn,bjhn,bijhn,bjhv->bihv', q, k, masks, v)


@pytest.mark.parametrize('tokens,dim_k,dim_v,decay', [
    (1, 16, 16, 'paper'), (16, 16, 8, 'weak'), (37, 32, 32, 'paper'), (100, 64, 24, 'strong'), (129, 16, 16, 'weak')])
def test_chunked_reference_matches_naive_recurrence(tokens, dim_k, dim_v, decay):
    q, k, v, g = (t.detach() for t in make_inputs(2, tokens, 3, dim_k, dim_v, decay))
    expected = naive_recurrence(q, k, v, g, scale=0.7)
    assert_close(chunked_forget_gate(q, k, v, g, scale=0.7), expected, torch.float32, 'chunked vs naive recurrence')
    assert_close(dense_masked_attention(q, k, v, g, 0.7, 'causal', None), expected, torch.float32,
                 'dense causal mask vs naive recurrence')


@pytest.mark.parametrize('direction,hw', [('bidirectional', None), ('4-direction', (5, 7)), ('4-direction', (1, 9)),
                                          ('4-direction', (6, 3))])
@pytest.mark.parametrize('decay', ['weak', 'strong'])
def test_reference_directions_match_dense_mask(direction, hw, decay):
    tokens = hw[0] * hw[1] if hw else 41
    q, k, v, g = (t.detach() for t in make_inputs(2, tokens, 2, 16, 8, decay, seed=3))
    expected = dense_masked_attention(q, k, v, g, 0.5, direction, hw)
    assert_close(forget_gate_reference(q, k, v, g, 0.5, direction, hw), expected, torch.float32, direction)


# Awkward shapes for the kernel: N not a multiple of the 16-token block, several segments (segment_len 16 / 32) or
# the default single segment (0), odd head counts, head dims 16 / 32 / 64 and Dv != Dk.
KERNEL_CASES = [
    dict(batch=1, tokens=37, heads=3, dim_k=16, dim_v=16, decay='paper', segment_len=16),
    dict(batch=2, tokens=50, heads=1, dim_k=32, dim_v=24, decay='weak', segment_len=32),
    dict(batch=1, tokens=21, heads=1, dim_k=64, dim_v=64, decay='strong', segment_len=0),
    dict(batch=1, tokens=33, heads=2, dim_k=16, dim_v=17, decay='strong', segment_len=16),
]


@pytest.mark.parametrize('case', KERNEL_CASES, ids=lambda c: '-'.join(str(v) for v in c.values()))
def test_kernel_matches_reference_fp32(case):
    case = dict(case)
    segment_len = case.pop('segment_len')
    inputs = make_inputs(**case)
    grad_out = torch.randn(*inputs[2].shape, generator=torch.Generator().manual_seed(1))
    expected, expected_grads = run_and_grad(lambda *t: forget_gate_reference(*t, 0.5), inputs, grad_out)
    actual, actual_grads = run_and_grad(lambda *t: forget_gate_triton(*t, 0.5, segment_len=segment_len), inputs,
                                        grad_out)
    assert_close(actual, expected, torch.float32, 'o')
    for name, got, want in zip(NAMES, actual_grads, expected_grads):
        assert_close(got, want, torch.float32, f'd{name}')


def test_kernel_key_and_value_tiles_match_reference(monkeypatch):
    """The backward's dk and dv kernels tile Dk and Dv over a grid axis; smaller tile budgets than the defaults give
    several tiles per head here (dk: 16 + 8 key channels of Dk = 24; dv: 16 + 16 + 8 value channels of Dv = 40), so
    the tile offsets and the ragged last tile are exercised at test sizes."""
    from mlla_mm.kernels.forget_gate import triton as forget_gate_triton_module
    monkeypatch.setattr(forget_gate_triton_module, 'DK_TILE_ELEMENTS', 16 * 64)  # BV = 64: 16 key channels
    monkeypatch.setattr(forget_gate_triton_module, 'DV_TILE_ELEMENTS', 16 * 32)  # BK = 32: 16 value channels
    inputs = make_inputs(1, 37, 2, 24, 40, 'paper', seed=4)
    grad_out = torch.randn(*inputs[2].shape, generator=torch.Generator().manual_seed(1))
    expected, expected_grads = run_and_grad(lambda *t: forget_gate_reference(*t, 0.5), inputs, grad_out)
    actual, actual_grads = run_and_grad(lambda *t: forget_gate_triton(*t, 0.5, segment_len=16), inputs, grad_out)
    assert_close(actual, expected, torch.float32, 'o')
    for name, got, want in zip(NAMES, actual_grads, expected_grads):
        assert_close(got, want, torch.float32, f'd{name}')


@pytest.mark.parametrize('direction,hw,tokens', [('bidirectional', None, 23), ('4-direction', (3, 5), 15)])
def test_kernel_directions_match_reference(direction, hw, tokens):
    inputs = make_inputs(1, tokens, 3, 16, 16, 'paper', seed=2)
    grad_out = torch.randn(*inputs[2].shape, generator=torch.Generator().manual_seed(1))
    expected, expected_grads = run_and_grad(lambda *t: forget_gate_reference(*t, 1.0, direction, hw), inputs,
                                            grad_out)
    actual, actual_grads = run_and_grad(lambda *t: forget_gate_triton(*t, 1.0, direction, hw, segment_len=16),
                                        inputs, grad_out)
    assert_close(actual, expected, torch.float32, f'o ({direction})')
    for name, got, want in zip(NAMES, actual_grads, expected_grads):
        assert_close(got, want, torch.float32, f'd{name} ({direction})')


@pytest.mark.parametrize('dtype,g_dtype', [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                           (torch.bfloat16, torch.bfloat16)])
def test_kernel_low_precision_matches_fp32_reference(dtype, g_dtype):
    """16-bit inputs, float32 state: the kernel must match the float32 reference on the same (rounded) inputs within
    the tolerance of the input dtype, for the output and every gradient; outputs and gradients keep their dtypes."""
    inputs = make_inputs(1, 40, 2, 32, 16, 'paper', dtype=dtype, g_dtype=g_dtype)
    reference_inputs = [t.detach().float().requires_grad_() for t in inputs]
    grad_out = torch.randn(*inputs[2].shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected, expected_grads = run_and_grad(lambda *t: forget_gate_reference(*t, 0.5), reference_inputs, grad_out)
    actual, actual_grads = run_and_grad(lambda *t: forget_gate_triton(*t, 0.5, segment_len=16), inputs, grad_out)
    assert actual.dtype == dtype
    assert_close(actual, expected, dtype, 'o')
    for name, got, want, given in zip(NAMES, actual_grads, expected_grads, inputs):
        assert got.dtype == given.dtype, f'd{name} is {got.dtype}, its input {given.dtype}'
        assert_close(got, want, dtype, f'd{name}')


@pytest.mark.slow
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('dim', [16, 32, 64])
@pytest.mark.parametrize('direction,hw,tokens', [('causal', None, 83), ('bidirectional', None, 47),
                                                 ('4-direction', (7, 9), 63)])
def test_kernel_sweep(dtype, dim, direction, hw, tokens):
    # Each (dtype, dim, direction) gets one decay strength, cycling through the three.
    decay = list(DECAYS)[(dim // 16 + len(direction) + dtype.itemsize) % len(DECAYS)]
    inputs = make_inputs(1, tokens, 3, dim, dim, decay, dtype=dtype)
    reference_inputs = [t.detach().float().requires_grad_() for t in inputs]
    grad_out = torch.randn(*inputs[2].shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected, expected_grads = run_and_grad(lambda *t: forget_gate_reference(*t, 0.5, direction, hw),
                                            reference_inputs, grad_out)
    actual, actual_grads = run_and_grad(lambda *t: forget_gate_triton(*t, 0.5, direction, hw, segment_len=32),
                                        inputs, grad_out)
    assert_close(actual, expected, dtype, 'o')
    for name, got, want in zip(NAMES, actual_grads, expected_grads):
        assert_close(got, want, dtype, f'd{name}')


def test_public_function_dispatches():
    q, k, v, g = (t.detach() for t in make_inputs(1, 12, 2, 16, 16, 'paper'))
    expected = naive_recurrence(q, k, v, g, 0.5)
    for backend in ('torch', 'triton'):
        actual = forget_gate_attention(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, g, 0.5, backend=backend)
        assert actual.dtype == torch.float32 and actual.is_contiguous()
        assert_close(actual, expected, torch.float32, f'o ({backend})')


def test_custom_op_registration():
    """Fake (meta) implementation, schema and autograd registration of the Triton op, as torch.compile needs them."""
    from mlla_mm.kernels.forget_gate.triton import _forget_gate_fwd
    inputs = make_inputs(1, 20, 1, 16, 16, 'paper')
    torch.library.opcheck(_forget_gate_fwd, (*inputs, 0.5, '4-direction', 4, 5, 16),
                          test_utils=('test_schema', 'test_autograd_registration', 'test_faketensor'))


def test_bad_inputs_raise_clear_errors():
    q, k, v, g = (t.detach() for t in make_inputs(1, 6, 2, 16, 8, 'paper'))
    with pytest.raises(ValueError, match=r'q must be \[B, N, H, Dk\]'):
        forget_gate_attention(q[0], k, v, g)
    with pytest.raises(ValueError, match='q, k, g must share the shape'):
        forget_gate_attention(q, k, v, g[..., :8])
    with pytest.raises(ValueError, match=r'v must be \[B, N, H, Dv\] with \[B, N, H\] = \(1, 6, 2\)'):
        forget_gate_attention(q, k, v[:, :5], g)
    with pytest.raises(TypeError, match='q, k, v dtypes differ'):
        forget_gate_attention(q.half(), k, v, g)
    with pytest.raises(TypeError, match='int64'):
        forget_gate_attention(q, k, v, g.long())
    with pytest.raises(ValueError, match='g is on meta but q is on cpu'):
        forget_gate_attention(q, k, v, g.to('meta'))
    with pytest.raises(ValueError, match=r"direction='diagonal' is not one of \('causal', 'bidirectional'"):
        forget_gate_attention(q, k, v, g, direction='diagonal')
    with pytest.raises(ValueError, match="'4-direction' needs hw"):
        forget_gate_attention(q, k, v, g, direction='4-direction')
    with pytest.raises(ValueError, match=r'hw=\(2, 2\) gives 4 tokens but N=6'):
        forget_gate_attention(q, k, v, g, direction='4-direction', hw=(2, 2))
    with pytest.raises(ValueError, match='Dk, Dv <= 128, got Dk=129'):
        big = torch.randn(1, 4, 1, 129)
        forget_gate_attention(big, big, big, -big.abs(), backend='triton')


COMPILE_FOR_SM90 = """
import inspect
from triton import compile as triton_compile
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mlla_mm.kernels.forget_gate import triton as forget_gate_triton

LOW_PRECISION = {'q_ptr', 'k_ptr', 'v_ptr', 'o_ptr', 'do_ptr', 'dq_ptr', 'dk_ptr', 'dv_ptr'}

def build(kernel, dtype, constexprs, num_warps):
    signature = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constexprs:
            signature[name] = 'constexpr'
        elif name.endswith('_ptr'):
            signature[name] = '*' + dtype if name in LOW_PRECISION else '*fp32'
        else:
            signature[name] = 'fp32' if name == 'scale' else 'i32'  # runtime sizes
    compiled = triton_compile(ASTSource(kernel, signature, constexprs), target=GPUTarget('cuda', 90, 32),
                              options=dict(num_warps=num_warps))
    assert 'cubin' in compiled.asm, kernel.__name__

for dtype, precision in (('fp32', 'tf32x3'), ('bf16', 'tf32')):
    meta = dict(DK=32, DV=32, BK=32, BV=32, BT=16, PRECISION=precision)
    build(forget_gate_triton._segment_state_kernel, dtype, meta, 4)
    for kernel in (forget_gate_triton._output_kernel, forget_gate_triton._dq_kernel, forget_gate_triton._dk_kernel,
                   forget_gate_triton._dv_kernel):
        build(kernel, dtype, meta, forget_gate_triton.TILE_WARPS)
for reverse in (False, True):
    build(forget_gate_triton._pass_states_kernel, 'fp32', dict(DK=32, DV=32, BLOCK=1024, REVERSE=reverse), 4)
"""


def test_kernels_compile_for_a_gpu():
    """Compile to an sm_90 cubin (no GPU needed) what the interpreter only emulates, at head dim 32 (MLLA's) for
    fp32 and bf16 inputs. A subprocess, because TRITON_INTERPRET=1 (set for this test session) turns @triton.jit into
    the interpreter."""
    import os
    import subprocess
    import sys
    env = {**os.environ, 'TRITON_INTERPRET': '0'}
    result = subprocess.run([sys.executable, '-c', COMPILE_FOR_SM90], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_no_register_spills_at_mlla_t_shapes(tmp_path):
    """tools/kernel_report.py on MLLA-T's stages (head dim 32, Dv = 33 with the normaliser column), every direction,
    fp32 / bf16 / fp16: ptxas for sm_90 reports no spills in any forget-gate kernel variant."""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / 'report.json'
    result = subprocess.run([sys.executable, os.path.join(root, 'tools', 'kernel_report.py'), '--ops', 'forget_gate',
                             '--models', 'mlla_t', '--sizes', '224', '--batches', '1', '--dtypes', 'fp32,bf16,fp16',
                             '--json', str(out)], env={**os.environ, 'TRITON_INTERPRET': '0'}, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert not report['skipped'], report['skipped']
    kernels = {record['kernel'] for record in report['variants']}
    assert {'_output_kernel', '_dq_kernel', '_dk_kernel', '_dv_kernel'} <= kernels, kernels
    spilling = [(r['kernel'], r['pointer_dtypes'], r['spill_stores'], r['spill_loads']) for r in report['variants']
                if r['spill_stores'] or r['spill_loads']]
    assert not spilling, spilling


@pytest.mark.slow
def test_compiles_without_graph_breaks_or_recompiles():
    """fullgraph=True, dynamic=True over two grid sizes: one graph (the Triton path is one custom-op node per launch
    group, and the routes are traced), matching the reference. Slow on a CPU: aot_eager plus the interpreter."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()

    def attention(q, k, v, g, hw):
        return forget_gate_attention(q, k, v, g, 0.5, '4-direction', hw, backend='triton')

    compiled = torch.compile(attention, backend='aot_eager', fullgraph=True, dynamic=True)
    for hw in ((3, 5), (4, 3)):
        inputs = make_inputs(1, hw[0] * hw[1], 2, 16, 16, 'paper')
        grad_out = torch.randn(*inputs[2].shape, generator=torch.Generator().manual_seed(1))
        expected, expected_grads = run_and_grad(lambda *t: forget_gate_reference(*t, 0.5, '4-direction', hw),
                                                inputs, grad_out)
        actual, actual_grads = run_and_grad(lambda *t: compiled(*t, hw), inputs, grad_out)
        assert_close(actual, expected, torch.float32, f'o {hw}')
        for name, got, want in zip(NAMES, actual_grads, expected_grads):
            assert_close(got, want, torch.float32, f'd{name} {hw}')
    assert counters['stats']['unique_graphs'] == 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('direction', ['causal', '4-direction'])
def test_kernel_on_gpu_at_stage1_shapes(dtype, direction):
    """MLLA-T stage 1 at 224^2 (56 x 56 tokens, 3 heads of 32), compiled kernels against the float32 reference, with
    the default (device-sized) segments."""
    hw = (56, 56)
    inputs = [t.detach().cuda().requires_grad_() for t in make_inputs(2, 56 * 56, 3, 32, 32, 'paper', dtype=dtype)]
    reference_inputs = [t.detach().float().requires_grad_() for t in inputs]
    grad_out = torch.randn(*inputs[2].shape, generator=torch.Generator().manual_seed(1)).to(dtype).cuda()
    expected, expected_grads = run_and_grad(lambda *t: forget_gate_reference(*t, 0.5, direction, hw),
                                            reference_inputs, grad_out)
    actual, actual_grads = run_and_grad(lambda *t: forget_gate_attention(*t, 0.5, direction, hw, backend='triton'),
                                        inputs, grad_out)
    assert_close(actual, expected, dtype, 'o')
    for name, got, want in zip(NAMES, actual_grads, expected_grads):
        assert_close(got, want, dtype, f'd{name}')
