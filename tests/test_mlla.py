"""MLLA model and its mm backbone adapter (no OpenMMLab needed except where marked)."""
import subprocess
import sys

import pytest
import torch

import mlla_mm
from mlla_mm.models.mlla import MLLA, MLLA_ARCHS, checkpoint_filter_fn
from mlla_mm.mm.mlla import MLLABackbone
from mlla_mm.utils import CheckpointMismatchError

from .upstream_keys import upstream_state_dict
from .upstream_oracle import upstream_backbone_forward


def test_import_pulls_in_no_heavy_dependency():
    code = ('import sys, mlla_mm, mlla_mm.models, mlla_mm.kernels; '
            'bad = sorted({m.split(".")[0] for m in sys.modules} & {"mmdet", "mmseg", "triton", "timm"}); '
            'assert not bad, bad')
    subprocess.run([sys.executable, '-c', code], check=True)


@pytest.mark.parametrize('name, params_m, keys', [('mlla_t', 24.39, 517), ('mlla_s', 43.02, 967),
                                                  ('mlla_b', 95.98, 967)])
def test_released_sizes_match_upstream(name, params_m, keys):
    model = mlla_mm.create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params_m
    # upstream also stores one RoPE table per block, which we recompute per size instead
    assert len(model.state_dict()) + sum(MLLA_ARCHS[model_arch(name)]['depths']) == keys


def model_arch(name):
    return {'mlla_t': 'tiny', 'mlla_s': 'small', 'mlla_b': 'base'}[name]


@pytest.mark.parametrize('size', [(224, 224), (512, 640), (511, 737)])
def test_backbone_shapes_any_size(size):
    model = MLLABackbone('test').eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    height, width = -(-size[0] // 4), -(-size[1] // 4)
    for i, out in enumerate(outs):
        assert out.shape == (1, 32 * 2 ** i, height, width)
        height, width = -(-height // 2), -(-width // 2)


def test_tiny_backbone_at_detection_size():
    model = MLLABackbone('tiny').eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 800, 1216))
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 200, 304), (128, 100, 152), (256, 50, 76), (512, 25, 38)]


def test_every_parameter_gets_a_gradient():
    model = MLLABackbone('test', drop_path_rate=0.0)
    outs = model(torch.randn(2, 3, 67, 45))
    sum(o.square().mean() for o in outs).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert all(torch.isfinite(o).all() for o in outs)


def test_classifier_forward():
    model = mlla_mm.create_model('mlla_test', num_classes=10)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert mlla_mm.create_model('mlla_test', num_classes=0)(torch.randn(1, 3, 64, 64)).shape == (1, 256)


def test_with_cp_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = MLLABackbone('test', drop_path_rate=0.0)
    checkpointed = MLLABackbone('test', drop_path_rate=0.0, with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 61, 83)
    results = []
    for model in (plain, checkpointed):
        outs = model(x)
        sum((o * torch.linspace(0, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        results.append((outs, {n: p.grad for n, p in model.named_parameters()}))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], msg=name)


def test_frozen_stages_stay_frozen_through_train():
    model = MLLABackbone('test', frozen_stages=2)
    model.train()
    frozen = [model.patch_embed, model.layers[0], model.layers[1], model.norm0, model.norm1]
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    assert model.layers[2].training and all(p.requires_grad for p in model.layers[2].parameters())
    before = {k: v.clone() for k, v in model.patch_embed.state_dict().items()}
    model(torch.randn(2, 3, 64, 64))  # BN running stats must not move in frozen, eval-mode modules
    for key, value in model.patch_embed.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_norm_eval_keeps_batchnorms_in_eval():
    model = MLLABackbone('test', norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns)
    assert model.layers[0].blocks[0].training


def test_upstream_classification_state_dict_loads_strictly():
    sd = upstream_state_dict(64, (2, 4, 8, 4), layout='classification')
    assert len(sd) == 517  # the documented key count of MLLA-T
    model = mlla_mm.create_model('mlla_t')
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    assert torch.equal(model.head.weight, sd['head.weight'])


def test_upstream_backbone_state_dict_loads_strictly():
    sd = upstream_state_dict(64, (2, 4, 8, 4), layout='backbone')
    model = MLLABackbone('tiny')
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    assert torch.equal(model.norm3.weight, sd['norm3.weight'])


@pytest.mark.parametrize('size', [(64, 64), (75, 53)])
def test_outputs_equal_upstream_formulation(size):
    sd = upstream_state_dict(32, (1, 2, 1, 1), layout='backbone', seed=1)
    arch = dict(embed_dim=32, depths=(1, 2, 1, 1), num_heads=(1, 2, 4, 8))
    model = MLLABackbone(arch).eval()
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(images)
    expected = upstream_backbone_forward(sd, images, (1, 2, 1, 1), (1, 2, 4, 8))
    for i, (a, b) in enumerate(zip(ours, expected)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m: f'stage {i}: {m}')


def _save(tmp_path, obj, name='ckpt.pth'):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize('entry', ['model', 'state_dict', 'state_dict_ema', None])
def test_init_cfg_pretrained_accepts_upstream_files(tmp_path, entry, caplog):
    sd = upstream_state_dict(32, (1, 1, 1, 1), layout='classification', num_classes=10)
    path = _save(tmp_path, sd if entry is None else {entry: sd, 'epoch': 3})
    model = MLLABackbone('test', init_cfg=dict(type='Pretrained', checkpoint=path))
    with caplog.at_level('INFO', logger='mlla_mm'):
        model.init_weights()
    key = 'layers.2.blocks.0.attn.qk.weight'
    assert torch.equal(model.state_dict()[key], sd[key])
    assert 'missing keys' in caplog.text and 'norm0.weight' in caplog.text  # the new output norms
    assert 'head.weight' in caplog.text  # the skipped classifier is named


def test_missing_pretrained_file_is_loud_and_keeps_random_weights(tmp_path, caplog):
    model = MLLABackbone('test', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'nope.pth')))
    before = model.layers[0].blocks[0].in_proj.weight.clone()
    with caplog.at_level('WARNING', logger='mlla_mm'):
        model.init_weights()
    assert 'RANDOM WEIGHTS' in caplog.text and 'nope.pth' in caplog.text
    assert torch.equal(before, model.layers[0].blocks[0].in_proj.weight)


def test_checkpoint_errors(tmp_path):
    model = MLLABackbone('test')
    unrelated = _save(tmp_path, {'model': {'fc.weight': torch.zeros(2, 2)}}, 'unrelated.pth')
    with pytest.raises(CheckpointMismatchError, match='no weight .* matches'):
        MLLABackbone('test', init_cfg=dict(type='Pretrained', checkpoint=unrelated)).init_weights()
    partial = upstream_state_dict(32, (1, 1, 1, 1), layout='classification')
    del partial['layers.1.blocks.0.in_proj.weight']
    with pytest.raises(CheckpointMismatchError, match=r'misses 1 weights.*layers\.1\.blocks\.0\.in_proj\.weight'):
        MLLABackbone('test', init_cfg=dict(type='Pretrained', checkpoint=_save(tmp_path, partial))).init_weights()
    wrong = upstream_state_dict(64, (1, 1, 1, 1), layout='classification')
    with pytest.raises(CheckpointMismatchError, match='shapes differ'):
        MLLABackbone('test', init_cfg=dict(type='Pretrained', checkpoint=_save(tmp_path, wrong))).init_weights()
    with pytest.raises(ValueError, match="type='Pretrained'"):
        MLLABackbone('test', init_cfg=dict(type='Kaiming')).init_weights()
    assert model is not None


def test_bad_input_errors():
    model = MLLABackbone('test')
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\].*\(1, 4, 32, 32\)'):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\].*\(3, 32, 32\)'):
        model(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match='floating-point'):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(KeyError, match="unknown arch 'huge'.*tiny, small, base, test"):
        MLLABackbone('huge')
    with pytest.raises(KeyError, match="unknown model 'mlla_xl'.*mlla_b.*mlla_t"):
        mlla_mm.create_model('mlla_xl')
    with pytest.raises(ValueError, match='out_indices'):
        MLLABackbone('test', out_indices=(0, 4))
    with pytest.raises(ValueError, match='frozen_stages'):
        MLLABackbone('test', frozen_stages=7)
    with pytest.raises(RuntimeError, match='without a head'):
        MLLA(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), num_classes=None)(torch.randn(1, 3, 32, 32))


def test_out_indices_subset_stops_early():
    model = MLLABackbone('test', out_indices=(1, 2)).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 128] and model.out_channels == [64, 128]
    assert not hasattr(model, 'norm0') and not hasattr(model, 'norm3')
