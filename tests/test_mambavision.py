"""MambaVision: released sizes and keys, upstream-layout loading, parity with an independent oracle
(tests/oracles/mambavision_oracle.py) with masked and with upstream's unmasked windows, and the Triton scan path."""
import pytest
import torch

from mlla_mm.models import create_model
from mlla_mm.models.mambavision import MAMBAVISION_ARCHS, MambaVisionMixer, checkpoint_filter_fn, window_indices
from tests.tolerances import assert_close

from .oracles.mambavision_oracle import mambavision_forward, upstream_state_dict

TEST = {k: MAMBAVISION_ARCHS['test'][k] for k in ('dim', 'in_dim', 'depths')}


def _trunk_keys(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize('name,params,keys', [
    ('mambavision_t', 31_794_248, 252),
    pytest.param('mambavision_t2', 35_104_008, 298, marks=pytest.mark.slow),
    pytest.param('mambavision_s', 50_140_584, 285, marks=pytest.mark.slow),
    pytest.param('mambavision_b', 97_685_288, 356, marks=pytest.mark.slow)])
def test_released_sizes_have_upstream_parameter_and_key_counts(name, params, keys):
    """reference/mambavision_vssd.md §1.4 (verified upstream counts, 1000-class head)."""
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == keys


def test_upstream_classification_state_dict_loads_strictly():
    """The key list of reference §1.5, built for MambaVision-T, is exactly the model's (names and shapes)."""
    state_dict = upstream_state_dict(**{k: MAMBAVISION_ARCHS['tiny'][k] for k in ('dim', 'in_dim', 'depths')})
    model = create_model('mambavision_t')
    assert _trunk_keys(model) == {k: tuple(v.shape) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True)
    mixer = model.levels[2].blocks[0].mixer
    assert torch.equal(mixer.dt_proj.bias, state_dict['levels.2.blocks.0.mixer.dt_proj.bias'])
    assert mixer.conv1d_x.bias is None and mixer.in_proj.bias is None and mixer.out_proj.bias is None


def test_upstream_downstream_backbone_state_dict_loads_into_a_trunk_and_the_mm_backbone():
    """MM_mamba_vision checkpoints (reference §1.7: outnorm{i}, no norm/head, under backbone.) load strictly: into a
    bare trunk without the output norms, and into the mm backbone with them."""
    state_dict = {f'backbone.{k}': v for k, v in upstream_state_dict(**TEST, num_classes=0).items()}
    trunk = create_model('mambavision_test', num_classes=0)
    trunk.prune_intermediate_layers(4, prune_norm=True)
    trunk.load_state_dict(checkpoint_filter_fn(state_dict, trunk), strict=True)

    from mmdet.registry import MODELS

    import mlla_mm.mm  # noqa: F401  registers the backbones
    backbone = MODELS.build(dict(type='MambaVision', arch='test'))
    backbone.load_state_dict(checkpoint_filter_fn(state_dict, backbone), strict=True)
    assert torch.equal(backbone.outnorm3.weight, state_dict['backbone.outnorm3.weight'])


def test_masked_windows_route_real_tokens_first_in_raster_order():
    # A 5 x 7 map in 3 x 3 windows: the bottom-right window holds the 2 x 1 region (3..4, 6).
    gather, scatter, pad, length = window_indices(5, 7, 3, masked=True)
    assert length == 9 and pad.shape == (6, 9)
    last = gather.view(6, 9)[5]
    assert last[:2].tolist() == [3 * 7 + 6, 4 * 7 + 6] and (last[2:] == 35).all() and pad[5].sum() == 7
    assert torch.equal(gather[scatter], torch.arange(35))
    # A window larger than the map is one global window without padding.
    gather, _, pad, length = window_indices(5, 7, 112, masked=True)
    assert length == 35 and pad is None and torch.equal(gather, torch.arange(35))


@pytest.mark.parametrize('masked,layer_scale', [(True, None), (False, 1e-5)])
def test_oracle_parity_at_a_padded_rectangular_size(masked, layer_scale):
    """Every stage output and the logits, fp32, at 67 x 93 (stage 3 is 5 x 6 in 3 x 3 windows, stage 4 3 x 3 in
    2 x 2 windows: padded, several windows): masked windows against the oracle's window-by-window forward, and
    masked_windows=False against its upstream-style zero-padded one."""
    state_dict = upstream_state_dict(**TEST, layer_scale=layer_scale, num_classes=10, seed=1)
    model = create_model('mambavision_test', num_classes=10, layer_scale=layer_scale, masked_windows=masked,
                         backend='torch').eval()
    model.load_state_dict(state_dict, strict=True)
    x = torch.randn(2, 3, 67, 93, generator=torch.Generator().manual_seed(0))
    settings = MAMBAVISION_ARCHS['test']
    with torch.no_grad():
        expected, logits = mambavision_forward(state_dict, x, settings['depths'], settings['num_heads'],
                                               settings['window_size'], masked=masked)
        final, maps = model.forward_intermediates(x)
        ours = model.forward_head(final)
    for i, (a, b) in enumerate(zip(maps, expected)):
        assert_close(a, b, torch.float32, f'stage {i}')
    assert_close(ours, logits, torch.float32, 'logits')


def test_masked_windows_do_not_depend_on_the_padding_but_upstreams_do():
    """Windows larger than the map: masked, any such window size gives the same (global) result; unmasked, the
    zero padding changes it (reference §1.2)."""
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))  # stage 3: 2 x 3, stage 4: 1 x 2
    state_dict = upstream_state_dict(**TEST, num_classes=10, seed=2)
    outputs = {}
    for masked in (True, False):
        for windows in ((8, 8, 3, 2), (8, 8, 5, 4)):
            model = create_model('mambavision_test', num_classes=10, window_size=windows, masked_windows=masked,
                                 backend='torch').eval()
            model.load_state_dict(state_dict)
            with torch.no_grad():
                outputs[masked, windows] = model(x)
    assert_close(outputs[True, (8, 8, 3, 2)], outputs[True, (8, 8, 5, 4)], torch.float32, 'masked logits')
    assert (outputs[False, (8, 8, 3, 2)] - outputs[False, (8, 8, 5, 4)]).abs().max() > 1e-2


def test_triton_scan_matches_the_torch_scan():
    """The mixer on the Triton selective scan (CPU interpreter) against the PyTorch reference, with a padded window:
    outputs on the real tokens and the gradients of the input and of every parameter."""
    torch.manual_seed(0)
    reference = MambaVisionMixer(16, backend='torch')
    triton = MambaVisionMixer(16, backend='triton')
    triton.load_state_dict(reference.state_dict())
    x = torch.randn(2, 5, 16)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])  # the second window holds 3 real tokens
    outputs, grads = [], []
    for mixer in (reference, triton):
        tokens = x.clone().requires_grad_()
        out = mixer(tokens, pad).masked_fill(pad[..., None], 0.0)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outputs.append(out)
        grads.append([tokens.grad] + [p.grad for p in mixer.parameters()])
    assert_close(outputs[1], outputs[0], torch.float32, 'mixer output')
    names = ['input'] + [n for n, _ in reference.named_parameters()]
    for name, ours, ref in zip(names, grads[1], grads[0]):
        assert_close(ours, ref, torch.float32, f'grad of {name}')


def test_no_weight_decay_names_the_ssm_parameters():
    model = create_model('mambavision_test')
    names = model.no_weight_decay()
    assert names and all(n.endswith(('mixer.A_log', 'mixer.D')) for n in names)
    assert len(names) == 2 * 3  # three mixer blocks: 2 in stage 3, 1 in stage 4
