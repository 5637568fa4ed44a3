"""VMamba v2 model: upstream layout and sizes, any input size, and the Triton backend against the PyTorch one."""
import pytest
import torch

from mlla_mm.models import VMAMBA_ARCHS, create_model
from mlla_mm.models.vmamba import checkpoint_filter_fn
from tests.tolerances import assert_close
from tests.upstream_vmamba_keys import upstream_vmamba_shapes, upstream_vmamba_state_dict


def test_documented_block_shapes():
    """The literal examples of reference/vmamba.md §1.8 (T layers.0.blocks.0, S layers.2.blocks.0)."""
    t = upstream_vmamba_shapes(**{k: VMAMBA_ARCHS['tiny'][k] for k in ('embed_dim', 'depths', 'ssm_ratio')})
    assert t['layers.0.blocks.0.op.x_proj_weight'] == (4, 8, 96)
    assert t['layers.0.blocks.0.op.A_logs'] == (384, 1)
    assert t['layers.0.blocks.0.op.dt_projs_weight'] == (4, 96, 6)
    assert t['layers.0.downsample.1.weight'] == (192, 96, 3, 3)
    s = upstream_vmamba_shapes(**{k: VMAMBA_ARCHS['small'][k] for k in ('embed_dim', 'depths', 'ssm_ratio')})
    assert s['layers.2.blocks.0.op.x_proj_weight'] == (4, 26, 768)
    assert s['layers.2.blocks.0.op.A_logs'] == (3072, 1)
    assert s['layers.2.blocks.0.op.dt_projs_weight'] == (4, 768, 24)
    assert s['layers.2.blocks.0.op.in_proj.weight'] == (768, 384)


@pytest.mark.parametrize('name,arch,params', [
    ('vmamba_t', 'tiny', 30.25e6), ('vmamba_s', 'small', 50.15e6), ('vmamba_b', 'base', 88.56e6)])
def test_released_models_have_upstream_keys_shapes_and_sizes(name, arch, params):
    model = create_model(name)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    settings = VMAMBA_ARCHS[arch]
    assert own == upstream_vmamba_shapes(settings['embed_dim'], settings['depths'], settings['ssm_ratio'])
    # upstream's verified counts with the 1000-class head (reference/vmamba.md §1.7)
    assert abs(sum(p.numel() for p in model.parameters()) - params) < 0.005e6


def test_upstream_classification_state_dict_loads_strictly():
    settings = VMAMBA_ARCHS['test']
    state_dict = upstream_vmamba_state_dict(settings['embed_dim'], settings['depths'], settings['ssm_ratio'])
    model = create_model('vmamba_test')
    model.load_state_dict(state_dict, strict=True)
    assert torch.equal(model.layers[2].blocks[1].op.A_logs, state_dict['layers.2.blocks.1.op.A_logs'])


def test_checkpoint_filter_maps_prefixes_conv_shaped_linears_and_classifier():
    settings = VMAMBA_ARCHS['test']
    state_dict = upstream_vmamba_state_dict(settings['embed_dim'], settings['depths'], settings['ssm_ratio'])
    state_dict['layers.0.blocks.0.op.in_proj.weight'] = state_dict['layers.0.blocks.0.op.in_proj.weight'][..., None,
                                                                                                         None]
    wrapped = {f'module.{k}': v for k, v in state_dict.items()}
    trunk = create_model('vmamba_test', num_classes=0)
    trunk.prune_intermediate_layers(4, prune_norm=True, prune_head=True)
    filtered = checkpoint_filter_fn(wrapped, trunk)
    assert not any(k.startswith('classifier.') for k in filtered)
    trunk.load_state_dict(filtered, strict=True)
    assert trunk.layers[0].blocks[0].op.in_proj.weight.shape == (32, 16)


def test_unknown_model_lists_known_ones():
    with pytest.raises(KeyError, match='vmamba_b, vmamba_s, vmamba_t, vmamba_test'):
        create_model('vmamba_x')


def test_initialisation_follows_mamba_init():
    op = create_model('vmamba_test').layers[0].blocks[0].op
    assert torch.all(op.A_logs == 0) and torch.all(op.Ds == 1)  # d_state 1: A = -1 at init
    dt = torch.nn.functional.softplus(op.dt_projs_bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6


@pytest.mark.parametrize('size,expected', [
    ((33, 45), [(9, 12), (5, 6), (3, 3), (2, 2)]),        # upstream's verified odd sizes (§4.3)
    ((519, 777), [(130, 195), (65, 98), (33, 49), (17, 25)]),
    ((64, 64), [(16, 16), (8, 8), (4, 4), (2, 2)]),
])
def test_any_input_size(size, expected):
    model = create_model('vmamba_test', num_classes=10).eval()
    with torch.no_grad():
        stages = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
        assert [tuple(s.shape[2:]) for s in stages] == expected
        assert [s.shape[1] for s in stages] == [16, 32, 64, 128]
        assert model(torch.randn(1, 3, *size)).shape == (1, 10)


def test_half_precision_model_keeps_a_float32_scan_output():
    # The scan returns float32 (upstream's guard against float16 overflow); out_norm must accept it in a .half()
    # model and hand float16 back to the residual stream.
    model = create_model('vmamba_test', num_classes=5, backend='torch').half().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 40).half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_bad_input_raises_clear_errors():
    model = create_model('vmamba_test')
    with pytest.raises(ValueError, match=r'expects images \[B, 3, H, W\], got shape \(1, 4, 32, 32\)'):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(TypeError, match='floating-point'):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_triton_backend_matches_torch_backend():
    """vmamba_test on the Triton kernels (CPU interpreter) against the PyTorch references: outputs of every stage
    and the gradients of the input and of every parameter."""
    torch.manual_seed(0)
    # eval(): no stochastic depth, so both models compute the same function (gradients still flow).
    torch_model = create_model('vmamba_test', num_classes=0, backend='torch').eval()
    triton_model = create_model('vmamba_test', num_classes=0, backend='triton').eval()
    for model in (torch_model, triton_model):  # the classifier norm takes no part in the stage maps
        model.prune_intermediate_layers(4, prune_norm=True, prune_head=True)
    triton_model.load_state_dict(torch_model.state_dict())
    x = torch.randn(1, 3, 23, 30)
    grads, outputs = [], []
    for model in (torch_model, triton_model):
        image = x.clone().requires_grad_()
        stages = model.forward_intermediates(image, intermediates_only=True)
        sum(((s * torch.linspace(-1, 1, s.numel()).view_as(s)).sum() for s in stages)).backward()
        outputs.append(stages)
        grads.append([image.grad] + [p.grad for p in model.parameters()])
    for i, (ours, ref) in enumerate(zip(outputs[1], outputs[0])):
        assert_close(ours, ref, torch.float32, f'stage {i}')
    names = ['input'] + [n for n, _ in torch_model.named_parameters()]
    for name, ours, ref in zip(names, grads[1], grads[0]):
        assert_close(ours, ref, torch.float32, f'grad of {name}')
