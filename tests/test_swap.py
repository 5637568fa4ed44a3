"""swap_backbone and tools/swap_backbone.py over the supported mmdet/mmseg recipes and every registered backbone."""
import copy
import functools
import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')

from mmengine.config import Config  # noqa: E402
from mmengine.hub import get_config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402

from mlla_mm.mm import BACKBONE_NAMES, BACKBONES, REGISTERED_IN, TimmBackbone, swap_backbone  # noqa: E402
from mlla_mm.mm.swap import build_empty, swap_changes  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DETECTION = {
    'faster_rcnn': 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    'mask_rcnn': 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    'cascade_mask_rcnn': 'mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py',
    'retinanet': 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    'fcos': 'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
    'atss': 'mmdet::atss/atss_r50_fpn_1x_coco.py',
    'dino': 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
}
SEGMENTATION = {
    'upernet': 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py',
    'semantic_fpn': 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py',
    'deeplabv3plus': 'mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-160k_ade20k-512x512.py',
}
RECIPES = {**DETECTION, **SEGMENTATION}
WITH_MASKS = ('mask_rcnn', 'cascade_mask_rcnn')
# The tiny variant of every backbone family; the released ones are only read on the meta device. By default MLLA's
# and VMamba's names run over every recipe; the other families' (which tests/test_swap_sweep.py and their own config
# tests cover too) join under -m slow.
TEST_NAMES = [name for name in BACKBONE_NAMES if name.endswith('_test')]
DEFAULT_FAMILIES = ('MLLA', 'VMamba')


def by_family(names):
    return [name if BACKBONE_NAMES[name]['type'] in DEFAULT_FAMILIES else pytest.param(name, marks=pytest.mark.slow)
            for name in names]


@functools.lru_cache(maxsize=None)
def _recipe(key):
    return get_config(RECIPES[key])


def recipe(key):
    return copy.deepcopy(_recipe(key))


@pytest.fixture(scope='module', autouse=True)
def registered():
    import mmdet.utils
    import mmseg.utils
    mmdet.utils.register_all_modules(init_default_scope=False)
    mmseg.utils.register_all_modules(init_default_scope=False)


def out_channels(cfg):
    """The channels the swapped backbone returns, read from an independently built (meta) model."""
    backbone = dict(cfg.model.backbone)
    return list(build_empty(BACKBONES[backbone.pop('type')], backbone).out_channels)


def without_scope(value, scope):
    """Drop the ``_scope_`` mmengine adds to dicts inherited from a package base; equal to default_scope, it has no
    effect."""
    if isinstance(value, dict):
        return {k: without_scope(v, scope) for k, v in value.items() if not (k == '_scope_' and v == scope)}
    if isinstance(value, (list, tuple)):
        return type(value)(without_scope(v, scope) for v in value)
    return value


# ---------------------------------------------------------------- the config changes (cheap: meta-device builds)

@pytest.mark.parametrize('name', by_family(BACKBONE_NAMES))
@pytest.mark.parametrize('key', list(RECIPES))
def test_swap_sets_backbone_and_consumers(key, name):
    original = recipe(key)
    before = original.to_dict()
    cfg = swap_backbone(original, name, pretrained='checkpoints/some.pth')
    assert original.to_dict() == before, 'the input config must not change'

    levels = (1, 2, 3) if key == 'dino' else (0, 1, 2, 3)
    assert cfg.model.backbone.to_dict() == {**BACKBONE_NAMES[name], 'out_indices': levels,
                                            'init_cfg': dict(type='Pretrained', checkpoint='checkpoints/some.pth')}
    assert cfg.model.get('pretrained') is None
    assert 'mlla_mm.mm' in cfg.custom_imports.imports
    channels = out_channels(cfg)
    if key in DETECTION or key == 'semantic_fpn':
        assert cfg.model.neck.in_channels == channels
        assert cfg.model.neck.to_dict() == {**before['model']['neck'], 'in_channels': channels}
    else:
        head, aux = cfg.model.decode_head, cfg.model.auxiliary_head
        assert head.in_channels == ([channels[i] for i in head.in_index] if key == 'upernet' else channels[3])
        assert aux.in_channels == channels[2]
        if key == 'deeplabv3plus':
            assert head.c1_in_channels == channels[0]
    # Only the model, the optimizer (and, for SGD recipes, the eta_min of the schedule) and custom_imports change.
    after = cfg.to_dict()
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed <= {'model', 'optim_wrapper', 'param_scheduler', 'custom_imports'}
    assert {k for k in after['model'] if after['model'][k] != before['model'].get(k)} <= {
        'backbone', 'neck', 'decode_head', 'auxiliary_head', 'pretrained', 'data_preprocessor'}


def test_family_optimizer_rules_and_sgd_switch():
    cfg = swap_backbone(recipe('upernet'), 'mlla_t')
    rules = BACKBONES['MLLA'].swap_rules
    assert cfg.optim_wrapper.optimizer.to_dict() == dict(type='AdamW', **rules['adamw']['mmseg'])
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys.to_dict() == rules['custom_keys']
    assert cfg.optim_wrapper.clip_grad is None  # the rest of the optimizer wrapper is the recipe's
    (poly,) = cfg.param_scheduler
    assert poly.eta_min == pytest.approx(1e-4 * 6e-5 / 1e-2)  # scaled with the lr
    assert poly.power == 0.9 and poly.end == 160000

    kept = swap_backbone(recipe('faster_rcnn'), 'mlla_t', keep_optimizer=True)
    assert kept.optim_wrapper.optimizer.to_dict() == recipe('faster_rcnn').optim_wrapper.optimizer.to_dict()
    assert kept.optim_wrapper.paramwise_cfg.custom_keys.to_dict() == rules['custom_keys']


def test_adamw_recipe_keeps_its_optimizer_and_shadowing_is_reported():
    changes, notes = swap_changes(recipe('dino'), 'mlla_t')
    assert 'optimizer' not in changes['optim_wrapper']
    cfg = swap_backbone(recipe('dino'), 'mlla_t')
    assert cfg.optim_wrapper.optimizer.to_dict() == recipe('dino').optim_wrapper.optimizer.to_dict()
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys.to_dict() == {'backbone': dict(lr_mult=0.1),
                                                                     'norm': dict(decay_mult=0.0)}
    assert any(note.startswith('WARNING') and "'backbone'" in note and "'norm'" in note for note in notes)


def test_caffe_normalisation_is_replaced():
    cfg = swap_backbone(recipe('fcos'), 'mlla_t')
    wanted = BACKBONES['MLLA'].swap_rules['data_preprocessor']
    assert {k: cfg.model.data_preprocessor[k] for k in wanted} == wanted
    assert cfg.model.data_preprocessor.pad_size_divisor == 32


def test_overrides_reach_the_backbone():
    cfg = swap_backbone(recipe('mask_rcnn'), 'mlla_test', drop_path_rate=0.3, with_cp=True)
    assert cfg.model.backbone.drop_path_rate == 0.3 and cfg.model.backbone.with_cp


# ---------------------------------------------------------------- errors

def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match='known backbones: ' + ', '.join(BACKBONE_NAMES)):
        swap_backbone(recipe('faster_rcnn'), 'resnet_1000')


def test_recipe_level_the_backbone_lacks():
    cfg = recipe('faster_rcnn')
    cfg.model.backbone.out_indices = (0, 1, 2, 3, 4)
    cfg.model.neck.in_channels = [64, 256, 512, 1024, 2048]
    with pytest.raises(ValueError, match=r'model\.backbone\.out_indices: the recipe\'s backbone \(ResNet\) feeds '
                                         r'levels \(0, 1, 2, 3, 4\) \(strides \[4, 8, 16, 32, 64\]\), but mlla_t '
                                         r'\(MLLA\) produces strides \[4, 8, 16, 32\] with channels '
                                         r'\[64, 128, 256, 512\]'):
        swap_backbone(cfg, 'mlla_t')


def test_neck_needing_more_levels_than_returned():
    with pytest.raises(ValueError, match=r'model\.neck \(FPN\) takes 4 levels \(in_channels \[256, 512, 1024, 2048\]\)'
                                         r' but the backbone returns 3 level\(s\) \(out_indices \(1, 2, 3\)\)'):
        swap_backbone(recipe('faster_rcnn'), 'mlla_t', out_indices=(1, 2, 3))


def test_head_index_out_of_range():
    cfg = recipe('upernet')
    cfg.model.auxiliary_head.in_index = 5
    with pytest.raises(ValueError, match=r'model\.auxiliary_head \(FCNHead\) takes in_index 5 but the backbone '
                                         r'returns 4 level\(s\)'):
        swap_backbone(cfg, 'mlla_t')


def test_detector_without_neck():
    cfg = recipe('retinanet')
    cfg.model.pop('neck')
    with pytest.raises(ValueError, match='the recipe has no model.neck'):
        swap_backbone(cfg, 'mlla_t')


def test_family_without_rules(monkeypatch):
    class Bare(BACKBONES['MLLA']):
        swap_rules = None

    monkeypatch.setitem(BACKBONES, 'Bare', Bare)
    monkeypatch.setitem(BACKBONE_NAMES, 'bare_test', dict(type='Bare', arch='test'))
    with pytest.raises(TypeError, match='Bare defines no swap_rules'):
        swap_backbone(recipe('faster_rcnn'), 'bare_test')


def test_every_family_defines_its_rules():
    for cls in BACKBONES.values():
        if cls is TimmBackbone:  # its normalisation is the timm model's, so its rules are per instance
            cls = TimmBackbone('convnext_atto')
        assert set(cls.swap_rules) == {'data_preprocessor', 'custom_keys', 'adamw'}, cls.__name__
        assert set(cls.swap_rules['adamw']) == {'mmdet', 'mmseg'}, cls.__name__


# ---------------------------------------------------------------- the written config file

def _tool():
    spec = importlib.util.spec_from_file_location('swap_backbone_tool', os.path.join(ROOT, 'tools', 'swap_backbone.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('key', list(RECIPES))
def test_written_config_equals_the_in_memory_swap(key, tmp_path):
    out = tmp_path / f'{key}.py'
    _tool().write(RECIPES[key], 'mlla_t', pretrained='checkpoints/MLLA_T.pth', backbone_options=dict(with_cp=True),
                  out=str(out))
    text = out.read_text()
    assert f"_base_ = '{RECIPES[key]}'" in text and '_delete_=True' in text
    written = Config.fromfile(str(out))
    swapped = swap_backbone(recipe(key), 'mlla_t', pretrained='checkpoints/MLLA_T.pth', with_cp=True)
    scope = swapped.default_scope
    assert without_scope(written.to_dict(), scope) == without_scope(swapped.to_dict(), scope)


def test_cli_with_a_config_path(tmp_path):
    base = tmp_path / 'recipes' / 'retina.py'
    base.parent.mkdir()
    base.write_text(f"_base_ = '{RECIPES['retinanet']}'\n")
    out = tmp_path / 'swapped' / 'retina_mlla.py'
    subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'swap_backbone.py'), str(base), '--backbone',
                    'mlla_test', '--keep-optimizer', '--out', str(out)], check=True, capture_output=True)
    assert "_base_ = '../recipes/retina.py'" in out.read_text()
    written = Config.fromfile(str(out))
    swapped = swap_backbone(Config.fromfile(str(base)), 'mlla_test', keep_optimizer=True)
    scope = swapped.default_scope
    assert without_scope(written.to_dict(), scope) == without_scope(swapped.to_dict(), scope)
    assert written.optim_wrapper.optimizer.type == 'SGD'


# ---------------------------------------------------------------- one training step on the CPU

@pytest.mark.parametrize('name', by_family(TEST_NAMES))
@pytest.mark.parametrize('key', list(RECIPES))
def test_one_training_step(key, name, mm_batch):
    torch.manual_seed(0)
    cfg = swap_backbone(recipe(key), name)
    if key in SEGMENTATION:
        cfg.model.data_preprocessor.size = (64, 64)  # the recipe pads to its 512x512 crop
    if key == 'dino':
        cfg.model.num_queries = 50  # DINO selects its queries among the encoder tokens: fewer than 900 at 64x96
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = REGISTERED_IN[cfg.default_scope].build(cfg.model)
        model.init_weights()
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    model.train()
    norm = next(p for n, p in model.backbone.named_parameters() if 'norm' in n and p.ndim == 1)
    group = next(g for g in optim_wrapper.optimizer.param_groups if any(p is norm for p in g['params']))
    # The family rule reached the optimizer (in DINO the recipe's 'backbone' key wins, as reported).
    assert group['weight_decay'] == (recipe(key).optim_wrapper.optimizer.weight_decay if key == 'dino' else 0.0)

    stem = next(model.backbone.parameters())
    before = stem.detach().clone()
    if key in DETECTION:
        batch = mm_batch('mmdet', batch=1, size=(64, 96), with_mask=key in WITH_MASKS)
    else:  # two images: the heads' pooled branches use BatchNorm on 1x1 maps
        batch = mm_batch('mmseg', batch=2, size=64, num_classes=150)
    log_vars = model.train_step(batch, optim_wrapper)
    assert math.isfinite(float(log_vars['loss']))
    assert not torch.equal(stem.detach(), before), 'the backbone did not train'
