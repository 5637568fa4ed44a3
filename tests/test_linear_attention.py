"""The generalised linear attention: Triton kernels (CPU, TRITON_INTERPRET=1) against the PyTorch reference for the
output and every gradient, per option setting; launch counts; the packed qk gradient; the custom op; dispatch.

Low-precision runs are compared with the fp32 reference evaluated on the same low-precision inputs, with the tolerance
of the input dtype from tests/tolerances.py.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mlla_mm
from mlla_mm.kernels import backends_used, linear_attention, select_backend
from mlla_mm.kernels.linear_attention import triton as la_triton
from mlla_mm.kernels.linear_attention.reference import linear_attention_reference
from mlla_mm.kernels.linear_attention.triton import linear_attention_triton
from mlla_mm.layers import LinearAttention

from .tolerances import assert_close

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Option settings of the op (the module docstring of mlla_mm.kernels.linear_attention) and how their tensors are
# made: gate 'head' [B, N, H] / 'channel' [B, N, H, Dv]; shortcut 'head' [H] / 'channel' [H, Dv]; lepe: a 3x3
# depthwise conv weight [C, 1, 3, 3] and bias [C].
SETTINGS = {
    'mlla': dict(),
    'mlla_lepe': dict(lepe=True),
    'vssd': dict(feature_map='none', rope=False, norm='none', gate='head', shortcut='head', shared_qk=True,
                 qk_order='kq'),
    'no_norm': dict(norm='none'),
    'mean_norm': dict(norm='mean'),
    'gate_channel': dict(gate='channel', shortcut='channel'),
    'gate_head': dict(gate='head', norm='mean'),
    'shared_qk': dict(shared_qk=True),
    'shared_qk_gated': dict(shared_qk=True, rope=False, feature_map='none', gate='channel', shortcut='channel',
                            norm='mean', lepe=True),
}

# (batch, height, width, heads, qk head dim, value head dim): N = height * width is rarely a multiple of the tiles;
# odd and degenerate grids; heads whose RoPE pairs mix row and column frequencies (3 heads of 32); head dims 16/32/64
# and ones padded to a power of two (24, 48); value and key dims that differ.
MLLA_SHAPES = [
    (2, 7, 9, 2, 32, 32),
    (1, 1, 13, 1, 32, 32),
    (3, 5, 1, 2, 16, 16),
    (2, 9, 7, 4, 16, 16),
    (1, 11, 13, 2, 64, 64),
    (1, 3, 43, 3, 32, 32),
    (2, 12, 16, 1, 64, 64),
    (1, 9, 14, 2, 48, 48),
    (2, 7, 7, 1, 24, 24),
    (1, 1, 1, 1, 16, 16),
]
OPTION_SHAPES = [
    (2, 7, 9, 2, 32, 32),
    (1, 11, 5, 3, 16, 48),
    (1, 5, 13, 2, 64, 64),
]


@pytest.fixture
def small_chunks(monkeypatch):
    """Split the token reduction into chunks of one tile, so that small test grids run the multi-chunk path (the
    last-program reduction)."""
    monkeypatch.setattr(la_triton, 'MIN_CHUNK', 16)


def make_inputs(shape, setting, dtype, layout='packed', seed=0):
    """qk [B, N, 2 Hk Dk], v [B, N, H, Dv], gate, shortcut, grad_out. layout 'packed': qk is a projection output
    and v a [B, N, C] view; 'strided': qk is a column slice of a wider tensor and v a head-first tensor transposed to
    [B, N, H, Dv]."""
    batch, height, width, heads, dk, dv = shape
    options = SETTINGS[setting]
    gen = torch.Generator().manual_seed(seed)
    tokens = height * width
    qk_channels = 2 * dk * (1 if options.get('shared_qk') else heads)
    if layout == 'packed':
        qk = torch.randn(batch, tokens, qk_channels, generator=gen)
        v = torch.randn(batch, tokens, heads * dv, generator=gen).view(batch, tokens, heads, dv)
    else:
        qk = torch.randn(batch, tokens, qk_channels + 8, generator=gen)[..., 3:3 + qk_channels]
        v = torch.randn(batch, heads, tokens, dv, generator=gen).transpose(1, 2)
    # Values scaled so that the output is O(1) without the denominator (sums of N * Dk signed terms, as in a model
    # where a norm follows): the tolerances are absolute + relative to O(1) outputs.
    norm = options.get('norm', 'denominator')
    if norm != 'denominator':
        v = v / (dk * (tokens if norm == 'none' else 1)) ** 0.5
    gate = {None: None, 'head': (batch, tokens, heads), 'channel': (batch, tokens, heads, dv)}[options.get('gate')]
    if gate is not None:
        gate = torch.rand(gate, generator=gen) + 0.1  # Delta = softplus(...) > 0
    shortcut = {None: None, 'head': (heads,), 'channel': (heads, dv)}[options.get('shortcut')]
    if shortcut is not None:
        shortcut = torch.randn(shortcut, generator=gen)  # a parameter: stays fp32
    lepe = (None, None)
    if options.get('lepe'):  # parameters: stay fp32
        lepe = 0.3 * torch.randn(heads * dv, 1, 3, 3, generator=gen), torch.randn(heads * dv, generator=gen)
    grad_out = torch.randn(batch, tokens, heads, dv, generator=gen)
    to = (lambda t: None if t is None else t.to(dtype))
    return to(qk), to(v), to(gate), shortcut, *lepe, to(grad_out)


OPTIONAL_TENSORS = ('gate', 'shortcut', 'lepe_weight', 'lepe_bias')


def op_options(setting):
    return {name: value for name, value in SETTINGS[setting].items() if name not in ('gate', 'shortcut', 'lepe')}


def run_with_grads(fn, tensors, grad_out, hw, options):
    """tensors: qk, v, gate, shortcut, lepe_weight, lepe_bias (None where absent)."""
    leaves = [None if t is None else t.detach().requires_grad_() for t in tensors]
    out = fn(leaves[0], leaves[1], hw, **dict(zip(OPTIONAL_TENSORS, leaves[2:])), **options)
    out.backward(grad_out)
    return out, [None if t is None else t.grad for t in leaves]


def check_against_reference(shape, setting, dtype, layout='packed'):
    *tensors, grad_out = make_inputs(shape, setting, dtype, layout)
    hw, options = shape[1:3], op_options(setting)
    out, grads = run_with_grads(linear_attention_triton, tensors, grad_out, hw, options)
    assert out.dtype == dtype and out.shape == tensors[1].shape and out.is_contiguous()
    up = (lambda t: None if t is None else t.float())
    ref_out, ref_grads = run_with_grads(linear_attention_reference, [up(t) for t in tensors], up(grad_out), hw,
                                        options)
    assert_close(out, ref_out, dtype, f'{setting} out {shape}')
    for name, grad, ref_grad, leaf in zip(('dqk', 'dv', 'dgate', 'dshortcut', 'dlepe_weight', 'dlepe_bias'), grads,
                                          ref_grads, tensors):
        if leaf is not None:
            assert grad.dtype == leaf.dtype and grad.shape == leaf.shape, name
            assert_close(grad, ref_grad, dtype, f'{setting} {name} {shape}')


@pytest.mark.parametrize('index', [0, 2, 4, 5, 8, 9], ids=lambda i: 'x'.join(map(str, MLLA_SHAPES[i])))
def test_mlla_setting_matches_reference(small_chunks, index):
    """MLLA's setting over awkward shapes (head dims 16/24/32/64, odd grids, 3 heads), each in one dtype (all three
    in turn); every shape in every dtype: -m slow."""
    check_against_reference(MLLA_SHAPES[index], 'mlla', DTYPES[index % 3], 'packed' if index % 2 == 0 else 'strided')


@pytest.mark.parametrize('setting', [s for s in SETTINGS if s != 'mlla'])
def test_option_settings_match_reference(small_chunks, setting):
    """Each other setting at one shape in one dtype (all three in turn); every dtype and shape: -m slow."""
    index = list(SETTINGS).index(setting)
    check_against_reference(OPTION_SHAPES[index % len(OPTION_SHAPES)], setting, DTYPES[index % 3],
                            'packed' if index % 2 == 0 else 'strided')


@pytest.mark.parametrize('setting, shape', [('mean_norm', OPTION_SHAPES[2]), ('gate_head', (1, 1, 13, 1, 32, 32))])
def test_elu_mean_norm_matches_reference_in_bf16(small_chunks, setting, shape):
    """ELU+1 features with the 1/N normaliser at bf16, whose dv is large (|dv| up to ~37: nothing divides the sums
    of Dk positive-mean terms) with elements cancelling to ~0.5. Two failures it caught: the interpreter truncated
    every fp32 -> bf16 cast (a GPU rounds to nearest; mean_norm, 2 dv elements at 1.06x the tolerance), and with
    bf16 operands in the products with the state, gate_head's dv reached 1.09x (hence fp32 state products there,
    triton._state_f32)."""
    check_against_reference(shape, setting, torch.bfloat16, 'packed' if sum(shape) % 2 == 0 else 'strided')


@pytest.mark.slow
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('shape', OPTION_SHAPES + MLLA_SHAPES, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('setting', list(SETTINGS))
def test_every_setting_shape_and_dtype(small_chunks, setting, shape, dtype):
    check_against_reference(shape, setting, dtype, 'strided' if sum(shape) % 2 else 'packed')


def test_single_chunk_default_launch():
    """The default chunking (one chunk below MIN_CHUNK tokens: no partials) and a grid with rows in the thousands,
    whose RoPE angles need the in-kernel range reduction."""
    check_against_reference((1, 500, 1, 1, 16, 16), 'mlla', torch.float32)


@pytest.mark.parametrize('tokens, batch_heads', [(67200, 2 * 2), (65536, 1 * 2), (3136, 128 * 2), (100, 1)])
def test_chunking_fills_an_h100(monkeypatch, tokens, batch_heads):
    monkeypatch.setattr(la_triton, '_sm_count', lambda device: 132)
    chunk_tokens, chunks = la_triton._chunking(tokens, batch_heads, 64, torch.device('cpu'))
    assert chunk_tokens % 64 == 0 and (chunks - 1) * chunk_tokens < tokens <= chunks * chunk_tokens
    # Either about PROGRAMS_PER_SM programs per SM, or chunks as small as allowed.
    assert chunks * batch_heads >= 0.9 * la_triton.PROGRAMS_PER_SM * 132 or chunk_tokens == la_triton.MIN_CHUNK


def test_unsupported_head_dims_raise():
    v = torch.randn(1, 4, 1, 4)
    with pytest.raises(ValueError, match=r'query/key head dim 3 .*Dk must be even and both <= 128'):
        linear_attention_triton(torch.randn(1, 4, 6), v, (2, 2), rope=False)
    with pytest.raises(ValueError, match='value head dim 256'):
        linear_attention_triton(torch.randn(1, 4, 64), torch.randn(1, 4, 1, 256), (2, 2))


# ----------------------------------------------------------------------------------------------------------------
# Launches and the packed gradient

class OpRecorder(TorchDispatchMode):
    """Names of the aten ops that do work (allocations and views move no data and are left out), outside the Triton
    launches (the interpreter copies tensors in and out of a kernel; a GPU launch does not)."""
    FREE = ('empty', 'empty_strided', 'new_empty', 'view', 'slice', 'unflatten', 'as_strided', 'detach', 'alias',
            't', 'transpose', 'permute', '_unsafe_view', 'unsqueeze', 'expand', 'split', 'flatten', 'select',
            '_reshape_alias')

    def __init__(self):
        super().__init__()
        self.ops = []
        self.in_kernel = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.in_kernel and name not in self.FREE:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def count_launches(monkeypatch, run):
    """(Triton kernel launches by name, aten compute ops outside them) while run() executes the op's launchers."""
    launches = []
    recorder = OpRecorder()

    def launcher(name, kernel, grid):
        def launch(*args, **kwargs):
            launches.append(name)
            recorder.in_kernel = True
            try:
                return kernel[grid](*args, **kwargs)
            finally:
                recorder.in_kernel = False
        return launch

    for name in ('_fwd_state_kernel', '_fwd_out_kernel', '_bwd_state_kernel', '_bwd_kv_kernel'):
        kernel = getattr(la_triton, name)
        monkeypatch.setattr(la_triton, name, type(name, (), {
            '__getitem__': lambda self, grid, name=name, kernel=kernel: launcher(name, kernel, grid)})())
    with recorder:
        run()
    return launches, recorder.ops


@pytest.mark.parametrize('setting', ['mlla', 'mlla_lepe', 'vssd', 'shared_qk_gated'])
def test_two_launches_forward_two_backward(small_chunks, monkeypatch, setting):
    """Forward: the state kernel (which reduces its own partials) and the output kernel (LePE included), no torch op;
    backward: the same two-kernel shape, plus one sum of the per-tile parts of the parameter gradients (D, LePE)
    where there are any. The multi-chunk path is forced."""
    shape = (1, 9, 8, 2, 32, 32)
    *tensors, grad_out = make_inputs(shape, setting, torch.float32)
    la_triton._arrival_counters(tensors[1].device, 2)  # allocated (zeroed) once per device, before the first launch
    options = op_options(setting)
    args = (shape[2], options.get('feature_map', 'elu'), options.get('rope', True),
            options.get('norm', 'denominator'), options.get('shared_qk', False), options.get('qk_order', 'qk'))
    result = {}
    launches, ops = count_launches(monkeypatch, lambda: result.update(fwd=la_triton._forward(*tensors, *args)))
    assert launches == ['_fwd_state_kernel', '_fwd_out_kernel'] and ops == []
    launches, ops = count_launches(monkeypatch, lambda: la_triton._backward(*tensors, result['fwd'][1], grad_out,
                                                                            *args))
    assert launches == ['_bwd_state_kernel', '_bwd_kv_kernel']
    with_params = tensors[3] is not None or tensors[4] is not None
    per_head_shortcut = tensors[3] is not None and tensors[3].dim() == 1
    # One sum of the parameter parts (the LePE weight gradient is a transposed view of it; the custom op's outputs
    # may not share storage, so a second parameter's [C] gradient is copied); a per-head D sums its channels too.
    views = (tensors[4] is not None) + (tensors[5] is not None) + (tensors[3] is not None and not per_head_shortcut)
    assert ops == ['sum'] * (with_params + per_head_shortcut) + ['clone'] * max(0, views - 1), ops
    # The arrival counters are left at zero for the next launch.
    assert not la_triton._arrival_counters(tensors[1].device, 1).any()


def test_layer_backward_builds_no_zero_filled_qk_gradient():
    """MLLA's mixer hands the packed qk projection to the op, whose Triton backward writes one packed gradient: no
    slice_backward (a zero-filled [B, N, 2C] gradient per q / k slice, then their sum), no zero-filled gradient of the
    internal state output."""
    torch.manual_seed(0)
    layer = LinearAttention(32, 1, backend='triton')
    x = torch.randn(1, 4, 5, 32, requires_grad=True)
    out = layer(x)
    with OpRecorder() as recorder:
        out.backward(torch.randn_like(out))
    assert not [op for op in recorder.ops if 'slice_backward' in op or op in ('zeros', 'zero_', 'fill_')], \
        recorder.ops


@pytest.mark.slow
def test_custom_op_passes_opcheck():
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of the two custom ops."""
    *tensors, _ = make_inputs((1, 2, 3, 1, 16, 16), 'shared_qk_gated', torch.float32)
    leaves = [t.requires_grad_() for t in tensors]
    torch.library.opcheck(torch.ops.mlla_mm.linear_attention_fwd.default,
                          (*leaves, 3, 'none', False, 'mean', True, 'qk'))


def test_compiles_in_one_graph():
    """The public op on the Triton backend under torch.compile(fullgraph=True, dynamic=True): the backend choice is
    traced, the custom op is one node, and the gradients match eager."""
    *tensors, grad_out = make_inputs((1, 3, 5, 2, 16, 16), 'vssd', torch.float32)
    options = op_options('vssd')

    def fn(qk, v, hw, **kwargs):
        return linear_attention(qk, v, hw, backend='triton', **kwargs)
    eager = run_with_grads(fn, tensors, grad_out, (3, 5), options)
    compiled = run_with_grads(torch.compile(fn, backend='aot_eager', fullgraph=True, dynamic=True), tensors,
                              grad_out, (3, 5), options)
    assert_close(compiled[0], eager[0], torch.float32, 'compiled out')
    for grad, ref in zip(compiled[1], eager[1]):
        if ref is not None:
            assert_close(grad, ref, torch.float32, 'compiled grad')


# ----------------------------------------------------------------------------------------------------------------
# Dispatch (kernels/backend.py through the public op)

def small_inputs(dtype=torch.float32):
    qk, v, *_ = make_inputs((1, 3, 5, 2, 16, 16), 'mlla', dtype)
    return qk, v


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    with pytest.raises(RuntimeError, match=r"backend='triton' cannot run: .*cpu.*TRITON_INTERPRET=1"):
        select_backend('linear_attention', 'triton', torch.device('cpu'))
    with pytest.raises(RuntimeError, match="linear_attention: backend='triton' cannot run"):
        linear_attention(*small_inputs(), (3, 5), backend='triton')


def test_auto_uses_the_reference_on_cpu_even_under_the_interpreter(monkeypatch):
    monkeypatch.delenv('MLLA_MM_STRICT', raising=False)
    assert select_backend('linear_attention', 'auto', torch.device('cpu')) == 'torch'
    qk, v = small_inputs()
    torch.testing.assert_close(linear_attention(qk, v, (3, 5), backend='auto'),
                               linear_attention_reference(qk, v, (3, 5)), rtol=0, atol=0)


def test_strict_mode_makes_auto_raise_on_cpu(monkeypatch):
    monkeypatch.setenv('MLLA_MM_STRICT', '1')
    with pytest.raises(RuntimeError, match='MLLA_MM_STRICT=1 forbids the fallback.*cpu'):
        linear_attention(*small_inputs(), (3, 5), backend='auto')
    # An explicit choice is not a fallback.
    assert select_backend('linear_attention', 'torch', torch.device('cpu')) == 'torch'


def test_environment_sets_the_default_backend(monkeypatch):
    monkeypatch.delenv('MLLA_MM_STRICT', raising=False)
    qk, v = small_inputs()
    monkeypatch.setenv('MLLA_MM_BACKEND', 'triton')
    assert select_backend('linear_attention', None, torch.device('cpu')) == 'triton'
    out = linear_attention(qk, v, (3, 5))
    assert 'triton' in backends_used()['linear_attention']
    assert_close(out, linear_attention_reference(qk, v, (3, 5)), torch.float32, 'out, MLLA_MM_BACKEND=triton')
    monkeypatch.setenv('MLLA_MM_BACKEND', 'torch')
    assert select_backend('linear_attention', None, torch.device('cpu')) == 'torch'
    monkeypatch.setenv('MLLA_MM_BACKEND', 'cuda')
    with pytest.raises(ValueError, match="MLLA_MM_BACKEND='cuda' is not a backend"):
        linear_attention(qk, v, (3, 5))


@pytest.mark.parametrize('case, error, match', [
    ('rank', ValueError, r'qk \[B, N, 2 \* Hk \* Dk\] must have rank 3, got shape \(15, 64\)'),
    ('dtype', TypeError, 'v \\[B, N, H, Dv\\] has dtype torch.float64'),
    ('tokens', ValueError, 'differ in batch or tokens'),
    ('mixed dtypes', TypeError, 'qk and v dtypes differ'),
    ('qk channels', ValueError, 'qk has 62 channels, not 2 \\* Hk \\* Dk for Hk=2'),
    ('hw', ValueError, r'hw=\(4, 4\) gives 16 tokens but N=15'),
    ('rope channels', ValueError, 'Hk\\*Dk divisible by 4'),
    ('gate', ValueError, r'gate \(1, 15, 3\) .* must be \[B, N, H\] or \[B, N, H, Dv\]'),
    ('shortcut', ValueError, r'shortcut \(16,\) must be \[H\] or \[H, Dv\]'),
    ('lepe', ValueError, r'lepe_weight \[C, 1, 3, 3\] must have rank 4, got shape \(32, 1, 3\)'),
    ('lepe bias', ValueError, r'lepe_bias \(32,\) needs lepe_weight'),
    ('norm', ValueError, r"norm='l2' is not one of \('denominator', 'mean', 'none'\)"),
    ('feature map', ValueError, "feature_map='relu' is not one of"),
    ('backend', ValueError, "backend='cuda' is not a backend"),
])
def test_bad_inputs_raise_clear_errors(case, error, match):
    qk, v = small_inputs()
    hw, options = (3, 5), dict(backend='triton')
    if case == 'rank':
        qk = qk[0]
    elif case == 'dtype':
        v = v.double()
    elif case == 'tokens':
        qk = qk[:, :10]
    elif case == 'mixed dtypes':
        v = v.half()
    elif case == 'qk channels':
        qk = qk[..., :62]
    elif case == 'hw':
        hw = (4, 4)
    elif case == 'rope channels':
        qk, v = torch.randn(1, 15, 12), torch.randn(1, 15, 3, 2)
    elif case == 'gate':
        options['gate'] = torch.rand(1, 15, 3)
    elif case == 'shortcut':
        options['shortcut'] = torch.rand(16)
    elif case == 'lepe':
        options['lepe_weight'] = torch.rand(32, 1, 3)
    elif case == 'lepe bias':
        options['lepe_bias'] = torch.rand(32)
    elif case == 'norm':
        options['norm'] = 'l2'
    elif case == 'feature map':
        options['feature_map'] = 'relu'
    else:
        options['backend'] = 'cuda'
    with pytest.raises(error, match=match):
        linear_attention(qk, v, hw, **options)


# ----------------------------------------------------------------------------------------------------------------
# The tiny MLLA on the Triton backend against the same weights on the PyTorch backend

@pytest.mark.slow
def test_mlla_tiny_triton_matches_torch(monkeypatch):
    kernel_calls = []
    forward = la_triton._forward
    monkeypatch.setattr(la_triton, '_forward', lambda *args: kernel_calls.append(args[1].shape) or forward(*args))
    torch.manual_seed(0)
    models = {backend: mlla_mm.create_model('mlla_test', backend=backend).eval() for backend in ('torch', 'triton')}
    models['triton'].load_state_dict(models['torch'].state_dict())
    image = torch.randn(1, 3, 32, 64)
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


# ----------------------------------------------------------------------------------------------------------------
# tools/benchmark_kernels.py (its timing needs a GPU; here: its arguments and the no-GPU message)

def load_benchmark_kernels():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools', 'benchmark_kernels.py')
    spec = importlib.util.spec_from_file_location('benchmark_kernels', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_kernels_measures_the_layer_and_says_why_it_cannot_run(monkeypatch):
    bench = load_benchmark_kernels()
    args = bench.parse_args(['--levels', 'layer', '--shapes', '2x2x200x336'])
    assert args.levels == ['layer'] and args.shapes == ((2, 2, 200, 336),)
    assert bench.parse_args([]).levels == ['op', 'layer']
    with pytest.raises(SystemExit):
        bench.parse_args(['--levels', 'block'])
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    with pytest.raises(SystemExit, match='needs a CUDA GPU'):
        bench.main(['--levels', 'layer'])


COMPILE_FOR_SM90 = """
import importlib.util, os, sys
import torch
from mlla_mm.kernels.linear_attention import linear_attention

# tools/kernel_report.py: launches recorded instead of run, then specialised as triton's launcher does (unit strides,
# 16-byte divisibility) and compiled for sm_90; ptxas gives registers and spills.
spec = importlib.util.spec_from_file_location('kernel_report', os.path.join(sys.argv[1], 'tools', 'kernel_report.py'))
kernel_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kernel_report)

HEIGHT, WIDTH, HEADS = 14, 14, 2
TOKENS = HEIGHT * WIDTH


def call(name, dtype):
    \"\"\"The op as its callers use it: MLLA's mixer (packed qk projection, v a view of [B, N, C], LePE weights in
    fp32), VSSD's NC-SSD (qk and v column slices of xBC, dt [B, N, H], D [H] in fp32) and the unnormalised settings
    with a per-channel (the ablation's input gate) or per-head gate at head dim 64.\"\"\"
    randn = lambda *shape, dtype=dtype: torch.randn(*shape, dtype=dtype, requires_grad=True)
    if name == 'mlla':
        channels = HEADS * 32
        return linear_attention(randn(1, TOKENS, 2 * channels), randn(1, TOKENS, channels).view(1, TOKENS, HEADS, 32),
                                (HEIGHT, WIDTH), lepe_weight=randn(channels, 1, 3, 3, dtype=torch.float32),
                                lepe_bias=randn(channels, dtype=torch.float32), backend='triton')
    if name == 'vssd':
        inner, state = HEADS * 64, 64
        xbc = randn(1, TOKENS, inner + 2 * state)
        return linear_attention(xbc[..., inner:], xbc[..., :inner].unflatten(-1, (HEADS, 64)), (HEIGHT, WIDTH),
                                feature_map='none', rope=False, norm='none', gate=randn(1, TOKENS, HEADS),
                                shortcut=randn(HEADS, dtype=torch.float32), shared_qk=True, qk_order='kq',
                                backend='triton')
    norm, gate = dict(mean_gated=('mean', (1, TOKENS, HEADS, 64)), none_gated=('none', (1, TOKENS, HEADS)))[name]
    return linear_attention(randn(1, TOKENS, 2 * HEADS * 64), randn(1, TOKENS, HEADS * 64).view(1, TOKENS, HEADS, 64),
                            (HEIGHT, WIDTH), norm=norm, gate=randn(*gate), backend='triton')


compiler = kernel_report.Compiler(90)
for dtype in (torch.bfloat16, torch.float16):
    for name in sys.argv[2:]:
        launches = []
        with kernel_report.captured_launches(launches):
            out = call(name, dtype)
            out.backward(torch.ones_like(out))
        assert len(launches) == 4, [kernel.fn.__name__ for kernel, *_ in launches]
        for kernel, args, kwargs, grid in launches:
            compiler.add(kernel, args, kwargs, grid, f'{name} {dtype}')
compiler.compile_all()
records = list(compiler.variants.values())
for record in records:
    print(record['labels'][0], record['kernel'], 'registers', record['registers'], 'spill bytes',
          record['spill_stores'], flush=True)
assert len(records) == 8 * (len(sys.argv) - 2), len(records)
assert not [record for record in records if record['spill_stores'] or record['spill_loads']]
"""


@pytest.mark.slow
@pytest.mark.parametrize('setting', [
    'mlla',
    # Known, not fixed here: ptxas caps _fwd_state_kernel at 128 registers with 8 warps (D = 64) and bf16 spills
    # 12 bytes there (4 warps: 238 registers, no spill); strict, so a fix shows up as XPASS.
    pytest.param('vssd', marks=pytest.mark.xfail(strict=True, reason='_fwd_state_kernel spills 12 B at bf16')),
    'mean_gated',
    'none_gated',
])
def test_kernels_compile_for_sm90_without_spills(setting):
    """Compile every kernel to an sm_90 cubin (no GPU needed) as the launchers specialise it for fp16 and bf16 calls
    of MLLA's mixer (LePE fused), VSSD's NC-SSD and the unnormalised settings (fp32 state products) with a gate at
    head dim 64, and check with ptxas that no registers spill. A subprocess, because TRITON_INTERPRET=1 (set for this
    test session) turns @triton.jit into the interpreter."""
    import os
    import subprocess
    import sys
    env = {**os.environ, 'TRITON_INTERPRET': '0'}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, '-c', COMPILE_FOR_SM90, root, setting], env=env, capture_output=True,
                            text=True, cwd=root)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
