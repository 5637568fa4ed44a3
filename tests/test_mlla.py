"""What is MLLA-specific: released sizes, upstream key layouts, parity with the upstream formulation, and the
checkpoint errors on MLLA layouts (the contract itself is checked by test_model_contract.py / test_mm_contract.py)."""
import subprocess
import sys

import pytest
import torch

import mlla_mm
from mlla_mm.models.mlla import MLLA, MLLA_ARCHS, checkpoint_filter_fn
from mlla_mm.mm import BACKBONES
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


MLLABackbone = BACKBONES['MLLA']


def model_arch(name):
    return {'mlla_t': 'tiny', 'mlla_s': 'small', 'mlla_b': 'base'}[name]


def test_tiny_backbone_at_detection_size():
    model = MLLABackbone('tiny').eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 800, 1216))
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 200, 304), (128, 100, 152), (256, 50, 76), (512, 25, 38)]


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
def test_init_cfg_pretrained_accepts_upstream_files(tmp_path, entry, monkeypatch):
    sd = upstream_state_dict(32, (1, 1, 1, 1), layout='classification', num_classes=10)
    path = _save(tmp_path, sd if entry is None else {entry: sd, 'epoch': 3})
    model = MLLABackbone('test', init_cfg=dict(type='Pretrained', checkpoint=path))
    messages = []  # what goes to mmengine's logger (the run's log file)
    monkeypatch.setattr('mlla_mm.utils.checkpoint.log_report', lambda message, level='INFO': messages.append(message))
    monkeypatch.setattr('mlla_mm.models.mlla.log_report', lambda message, level='INFO': messages.append(message))
    model.init_weights()
    report = '\n'.join(messages)
    key = 'layers.2.blocks.0.attn.qk.weight'
    assert torch.equal(model.state_dict()[key], sd[key])
    assert 'missing keys' in report and 'norm0.weight' in report  # the new output norms
    assert 'head.weight' in report  # the skipped classifier is named


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


def test_out_indices_subset_stops_early():
    model = MLLABackbone('test', out_indices=(1, 2)).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 128] and model.out_channels == [64, 128]
    assert not hasattr(model, 'norm0') and not hasattr(model, 'norm3')
