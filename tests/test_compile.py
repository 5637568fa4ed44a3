"""torch.compile: every tiny model variant compiles with fullgraph=True, dynamic=True and no graph break on the CPU
(torch backend) and gives eager's output; the Triton ops trace as custom ops (through the interpreter here)."""
import pytest
import torch

import mlla_mm
from mlla_mm.kernels.cross_scan import cross_merge, cross_scan
from mlla_mm.kernels.selective_scan import selective_scan
from tests.tolerances import assert_close

# The tiny variant of every family ('<family>_test'); a new family registers its own and is covered here. Tracing
# with symbolic shapes costs 15-60 s per model on a CPU: MLLA and VMamba run by default, the others with -m slow.
TEST_MODELS = sorted(name for name in mlla_mm.list_models() if name.endswith('_test'))
DEFAULT_MODELS = ('mlla_test', 'vmamba_test')
MODEL_PARAMS = [name if name in DEFAULT_MODELS else pytest.param(name, marks=pytest.mark.slow) for name in TEST_MODELS]


class GraphCounter:
    """A dynamo backend that counts the graphs it is given and runs them as traced."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def features(model):
    """The backbone path the mm adapters run (every stage's map, models/README.md), else forward_features."""
    if hasattr(model, 'forward_intermediates'):
        return lambda x: model.forward_intermediates(x, intermediates_only=True)
    return model.forward_features


def test_there_are_models_to_compile():
    assert set(DEFAULT_MODELS) <= set(TEST_MODELS), TEST_MODELS


def _compile_and_compare(name, sizes):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = mlla_mm.create_model(name, num_classes=0).eval()
    counter = GraphCounter()
    compiled = torch.compile(features(model), backend=counter, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for size in sizes:
            x = torch.randn(1, 3, *size)
            actual, expected = compiled(x), features(model)(x)
            for got, want in zip(_tensors(actual), _tensors(expected)):
                assert_close(got, want, torch.float32, f'{name} compiled vs eager at {size}')
    return counter.graphs


@pytest.mark.parametrize('name', MODEL_PARAMS)
def test_model_compiles_in_one_graph(name, monkeypatch):
    """fullgraph=True raises at the first graph break; the compiled features equal eager's."""
    monkeypatch.setenv('MLLA_MM_BACKEND', 'torch')
    assert _compile_and_compare(name, [(64, 96)]) == 1


@pytest.mark.slow
@pytest.mark.parametrize('name', TEST_MODELS)
def test_model_does_not_recompile_for_a_new_size(name, monkeypatch):
    """dynamic=True: one graph serves a second (odd, rectangular) size that takes the same branches. Sizes that change
    a branch do recompile once: on a CPU PyTorch picks each convolution's backend by whether its input has more than
    20480 elements (128x160 put a 16-channel stride-4 map exactly on that line), MambaVision pads its stage-3 windows
    or not, and the scan reference takes log2(L / 64) steps over its chunks. At these two sizes every conv input of
    every tiny model stays at least 13% from that line, MambaVision pads W only in both, and every scan's chunk count
    stays within one power of 2."""
    monkeypatch.setenv('MLLA_MM_BACKEND', 'torch')
    graphs = _compile_and_compare(name, [(144, 176), (139, 167)])
    assert graphs == 1, f'{name}: {graphs} graphs for two input sizes (recompiled)'


def test_graph_break_count_is_zero_on_a_cold_model(monkeypatch):
    """The backend report (a logger.info) used to break the graph at every op on a cold process: explain counts."""
    from mlla_mm.kernels import backend
    monkeypatch.setenv('MLLA_MM_BACKEND', 'torch')
    monkeypatch.setattr(backend, '_used', {})  # as if no op had reported yet
    torch._dynamo.reset()
    model = mlla_mm.create_model('vmamba_test', num_classes=0).eval()
    explanation = torch._dynamo.explain(features(model))(torch.randn(1, 3, 40, 48))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert backend._used == {}, 'the report ran inside the trace'


@pytest.mark.slow
@pytest.mark.parametrize('name', TEST_MODELS)
def test_model_training_step_compiles(name, monkeypatch):
    """Forward and backward through aot_autograd (the backward graph too), gradients equal to eager's."""
    monkeypatch.setenv('MLLA_MM_BACKEND', 'torch')
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = mlla_mm.create_model(name, num_classes=0).train()
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True, dynamic=True)
    torch.manual_seed(1)
    compiled(x).square().mean().backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(1)
    model(x).square().mean().backward()
    for got, want in zip(compiled_grads, [p.grad for p in model.parameters()]):
        assert_close(got, want, torch.float32, f'{name} parameter gradient')


def _scan_and_merge(x, u_extra, A, D, bias, backend):
    """SS2D's kernel path: cross-scan, a selective scan over the 4 routes, cross-merge."""
    batch, channels, height, width = x.shape
    routes = cross_scan(x, backend=backend).reshape(batch, 4 * channels, height * width)
    B = routes.view(batch, 4, channels, -1)[:, :, :1]
    y = selective_scan(routes, routes * u_extra, A, B, B, D, bias, delta_softplus=True, output_fp32=True,
                       backend=backend)
    return cross_merge(y.view(batch, 4, channels, -1), height, width, backend=backend)


def test_triton_ops_trace_as_custom_ops():
    """backend='triton' (the interpreter on this CPU): one graph with the custom ops as nodes, over two sizes,
    forward and backward equal to eager."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    A = -torch.rand(8, 1, generator=gen) - 0.5
    D, bias = torch.randn(8, generator=gen), torch.randn(8, generator=gen) - 2.0
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return make_boxed_func(graph_module.forward)

    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    compiled = torch.compile(_scan_and_merge, backend=aot_autograd(fw_compiler=backend, bw_compiler=backend),
                             fullgraph=True, dynamic=True)
    for height, width in ((3, 5), (4, 6)):
        x = torch.randn(1, 2, height, width, generator=gen, requires_grad=True)
        actual = compiled(x, 0.5, A, D, bias, 'triton')
        expected = _scan_and_merge(x, 0.5, A, D, bias, 'triton')
        assert_close(actual, expected, torch.float32, 'compiled vs eager')
        grad_out = torch.randn(actual.shape, generator=gen)
        got, = torch.autograd.grad(actual, x, grad_out)
        want, = torch.autograd.grad(expected, x, grad_out)
        assert_close(got, want, torch.float32, 'compiled vs eager dx')
    forward_code = graphs[0].code
    for op in ('mlla_mm.cross_scan', 'mlla_mm.selective_scan_fwd', 'mlla_mm.cross_merge'):
        assert op in forward_code, f'{op} is not a node of the compiled graph'
    assert len(graphs) == 2, f'{len(graphs)} forward/backward graphs for two sizes (recompiled)'


def _tensors(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]
