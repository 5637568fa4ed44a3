"""VSSD: released sizes, upstream-layout loading, and parity with an independent oracle
(tests/oracles/vssd_oracle.py)."""
import pytest
import torch

import mlla_mm
from mlla_mm.models.vssd import VSSD_ARCHS, checkpoint_filter_fn
from mlla_mm.utils import CheckpointMismatchError

from .oracles.vssd_oracle import upstream_state_dict, vssd_forward
from .tolerances import assert_close

TEST = VSSD_ARCHS['test']


def _arch(name):
    return {k: VSSD_ARCHS[name][k] for k in ('embed_dim', 'depths', 'num_heads', 'd_state')}


@pytest.mark.parametrize('name, params, keys', [
    ('vssd_m', 13_512_964, 379), ('vssd_t', 24_270_724, 421),
    pytest.param('vssd_s', 40_075_650, 730, marks=pytest.mark.slow),
    pytest.param('vssd_b', 88_823_151, 730, marks=pytest.mark.slow)])
def test_released_sizes_match_upstream(name, params, keys):
    # Parameter and key counts of upstream's VMAMBA2 with the 1000-class head (reference section 2.2, measured).
    model = mlla_mm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == keys


def test_upstream_tiny_layout_loads_strictly():
    sd = upstream_state_dict(**_arch('tiny'), layout='classification')
    assert len(sd) == 421  # the documented key count of VSSD-T
    model = mlla_mm.create_model('vssd_t')
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    key = 'layers.2.blocks.7.attn.in_proj.weight'
    assert torch.equal(model.state_dict()[key], sd[key])


@pytest.mark.parametrize('entry', ['model', 'model_ema'])
def test_released_file_layout_loads_by_key(tmp_path, entry):
    # Upstream's training script saves 'model' and 'model_ema' side by side (with a yacs config, allow-listed).
    sd = upstream_state_dict(**_arch('test'), layout='classification', seed=3)
    path = tmp_path / 'vssd.pth'
    torch.save({entry: sd, 'epoch': 299}, path)
    model = mlla_mm.create_model('vssd_test', pretrained=str(path))
    assert torch.equal(model.head.weight, sd['head.weight'])
    trunk = mlla_mm.create_model('vssd_test', pretrained=str(path), num_classes=0)  # classifier keys dropped by name
    assert torch.equal(trunk.layers[3].blocks[0].attn.to_qkv.weight, sd['layers.3.blocks.0.attn.to_qkv.weight'])


def test_wider_or_partial_checkpoints_fail(tmp_path):
    partial = upstream_state_dict(**_arch('test'), layout='classification')
    del partial['layers.1.blocks.0.attn.A_log']
    torch.save({'model': partial}, tmp_path / 'partial.pth')
    with pytest.raises(CheckpointMismatchError, match=r'layers\.1\.blocks\.0\.attn\.A_log'):
        mlla_mm.create_model('vssd_test', pretrained=str(tmp_path / 'partial.pth'))
    wider = upstream_state_dict(**{**_arch('test'), 'd_state': 16}, layout='classification')
    torch.save({'model': wider}, tmp_path / 'wider.pth')
    with pytest.raises(CheckpointMismatchError, match='shapes differ'):
        mlla_mm.create_model('vssd_test', pretrained=str(tmp_path / 'wider.pth'))


@pytest.mark.parametrize('size', [(72, 104), (67, 45)])
def test_outputs_equal_oracle_fp32(size):
    sd = upstream_state_dict(**_arch('test'), layout='classification', seed=1)
    model = mlla_mm.create_model('vssd_test').eval()
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features, maps = model.forward_intermediates(images)
        logits = model.forward_head(features)
    expected_maps, expected_logits = vssd_forward(sd, images, TEST['depths'], TEST['num_heads'], TEST['d_state'])
    for i, (ours, theirs) in enumerate(zip(maps, expected_maps)):
        assert ours.shape == theirs.shape
        assert_close(ours, theirs, torch.float32, f'stage {i} at {size}')
    assert_close(logits, expected_logits, torch.float32, f'logits at {size}')


def test_any_size_gives_ceil_strides():
    model = mlla_mm.create_model('vssd_test', num_classes=0).eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 65, 97), intermediates_only=True)
    assert [tuple(m.shape[2:]) for m in maps] == [(17, 25), (9, 13), (5, 7), (3, 4)]


def test_every_parameter_gets_a_gradient():
    model = mlla_mm.create_model('vssd_test', drop_path_rate=0.0)
    model(torch.randn(2, 3, 40, 56)).square().mean().backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    assert {'layers.0.blocks.0.attn.A_log', 'layers.0.blocks.0.attn.D'} <= model.no_weight_decay()


def test_bad_input_errors():
    model = mlla_mm.create_model('vssd_test')
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\].*\(1, 4, 32, 32\)'):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(KeyError, match="unknown arch 'huge'.*micro, tiny, small, base, test"):
        mlla_mm.models.get_family('VSSD').model_name('huge')
    with pytest.raises(ValueError, match='differ in length'):
        mlla_mm.models.vssd.VSSD(depths=(1, 1), num_heads=(1, 2, 4))


def test_upstream_backbone_weights_load_into_the_mm_backbone_with_outnorms(tmp_path):
    # MM_VSSD's layout: the trunk plus outnorm0..3, no classifier; saved under 'backbone.' as in a detector.
    from mlla_mm.mm import BACKBONES
    sd = upstream_state_dict(**_arch('test'), layout='backbone', seed=4)
    path = tmp_path / 'mm_vssd.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in sd.items()}}, path)
    backbone = BACKBONES['VSSD'](arch='test', out_indices=(0, 1, 2, 3),
                                 init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    backbone.init_weights()
    images = torch.randn(1, 3, 50, 83, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = backbone.eval()(images)
    expected, _ = vssd_forward(sd, images, TEST['depths'], TEST['num_heads'], TEST['d_state'])
    for i, (a, b) in enumerate(zip(ours, expected)):
        assert_close(a, b, torch.float32, f'backbone output {i}')
