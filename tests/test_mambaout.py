"""MambaOut: released sizes and keys, the original and timm layouts loading strictly, parity with an independent oracle
(tests/oracles/mambaout_oracle.py), and the per-stage output LayerNorms of the mm backbone."""
import pytest
import torch

from mlla_mm.models import create_model
from mlla_mm.models.mambaout import MAMBAOUT_ARCHS, checkpoint_filter_fn
from tests.tolerances import assert_close

from .oracles.mambaout_oracle import mambaout_forward, upstream_state_dict

TEST = {k: MAMBAOUT_ARCHS['test'][k] for k in ('depths', 'dims')}


@pytest.mark.parametrize('name,params,trunk,keys', [
    ('mambaout_t', 26_545_096, 22_904_928, 172),
    pytest.param('mambaout_s', 48_488_072, 44_847_904, 324, marks=pytest.mark.slow),
    pytest.param('mambaout_b', 84_813_092, 79_370_044, 324, marks=pytest.mark.slow)])
def test_released_sizes_have_upstream_parameter_and_key_counts(name, params, trunk, keys):
    """reference/vim_mambaout.md B1 (measured upstream counts with the 1000-class head, and without norm and head)."""
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == keys
    model.prune_intermediate_layers(4, prune_norm=True, prune_head=True)
    assert sum(p.numel() for p in model.parameters()) == trunk


def test_original_state_dict_loads_strictly():
    """The key list of reference B3 (the released files), built for MambaOut-T, is exactly the model's."""
    state_dict = upstream_state_dict(**{k: MAMBAOUT_ARCHS['tiny'][k] for k in ('depths', 'dims')})
    model = create_model('mambaout_t')
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in state_dict.items()}
    model.load_state_dict(checkpoint_filter_fn(state_dict, model), strict=True)


def test_timm_layout_loads_and_gives_timms_outputs():
    """A state dict of timm's MambaOut (stem.*, stages.i.blocks.j.*, head.pre_logits.*) goes through the filter into
    our model, strictly, and both compute the same logits."""
    from timm.models.mambaout import MambaOut as TimmMambaOut
    torch.manual_seed(0)
    timm_model = TimmMambaOut(num_classes=10, **TEST).eval()
    state_dict = {f'module.{k}': v for k, v in timm_model.state_dict().items()}
    assert 'module.stem.conv1.weight' in state_dict and 'module.head.pre_logits.fc.weight' in state_dict
    model = create_model('mambaout_test', num_classes=10).eval()
    model.load_state_dict(checkpoint_filter_fn(state_dict, model), strict=True)
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        assert_close(model(x), timm_model(x), torch.float32, 'logits')


def test_oracle_parity_at_an_odd_rectangular_size():
    """Every stage output and the logits, fp32, at 67 x 93."""
    state_dict = upstream_state_dict(**TEST, num_classes=10, seed=1)
    model = create_model('mambaout_test', num_classes=10).eval()
    model.load_state_dict(state_dict, strict=True)
    x = torch.randn(2, 3, 67, 93, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, logits = mambaout_forward(state_dict, x, TEST['depths'])
        final, maps = model.forward_intermediates(x)
        ours = model.forward_head(final)
    assert [tuple(m.shape[2:]) for m in maps] == [(17, 24), (9, 12), (5, 6), (3, 3)]
    for i, (a, b) in enumerate(zip(maps, expected)):
        assert_close(a, b, torch.float32, f'stage {i}')
    assert_close(ours, logits, torch.float32, 'logits')


def test_mm_backbone_adds_a_layernorm_per_stage_output():
    """yuweihao/MambaOut#251: a LayerNorm (eps 1e-6 as the family's) on each stage output; a detector checkpoint of
    the backbone (backbone.-prefixed, with norm{i}) loads back strictly."""
    from mmdet.registry import MODELS

    import mlla_mm.mm  # noqa: F401  registers the backbones
    backbone = MODELS.build(dict(type='MambaOut', arch='test', out_indices=(1, 2, 3))).eval()
    assert [getattr(backbone, f'norm{i}').eps for i in (1, 2, 3)] == [1e-6] * 3 and not hasattr(backbone, 'norm0')
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        outs = backbone(x)
        maps = backbone.forward_intermediates(x, indices=[1, 2, 3], output_fmt='NHWC', intermediates_only=True)
    for i, out, raw in zip((1, 2, 3), outs, maps):
        assert_close(out, getattr(backbone, f'norm{i}')(raw).permute(0, 3, 1, 2), torch.float32, f'output {i}')
    detector = {f'backbone.{k}': v + 1 for k, v in backbone.state_dict().items()}
    backbone.load_state_dict(checkpoint_filter_fn(detector, backbone), strict=True)
    assert torch.equal(backbone.norm2.weight, detector['backbone.norm2.weight'])
