"""Every mm backbone type generated from the model registry: registration, out_indices, frozen stages, norm_eval,
a strict round trip through a saved checkpoint, and the checkpoint errors (missing, corrupted, unsafe, deeper or
wider). A family gets this suite by being registered."""
import argparse

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

import mlla_mm.mm
from mlla_mm.mm import BACKBONES, BACKBONE_NAMES, TimmBackbone
from mlla_mm.models import list_families
from mlla_mm.utils import CheckpointMismatchError, CheckpointReadError
from mlla_mm.utils.checkpoint import CfgNode

FAMILIES = sorted(list_families())


def _test_arch(family):
    archs = list_families()[family].archs
    return 'test' if 'test' in archs else next(iter(archs))


def _backbone(family, **kwargs):
    torch.manual_seed(0)
    return BACKBONES[family](arch=_test_arch(family), drop_path_rate=0.0, **kwargs)


def _save(tmp_path, obj, name='ckpt.pth'):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize('family', FAMILIES)
def test_registered_in_both_libraries_with_every_model_name(family):
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    for registry in (DET_MODELS, SEG_MODELS):
        assert isinstance(registry.build(dict(type=family, arch=_test_arch(family))), BACKBONES[family])
    for arch, model in list_families()[family].archs.items():
        assert BACKBONE_NAMES[model] == dict(type=family, arch=arch)


@pytest.mark.parametrize('family', FAMILIES)
def test_out_indices_give_nchw_maps_at_their_strides(family):
    backbone = _backbone(family, out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 67, 91))
    info = backbone.feature_info
    assert [o.shape[1] for o in outs] == backbone.out_channels == [info[1]['num_chs'], info[3]['num_chs']]
    assert [tuple(o.shape[2:]) for o in outs] == [(-(-67 // info[i]['reduction']), -(-91 // info[i]['reduction']))
                                                  for i in (1, 3)]
    assert all(o.is_contiguous() for o in outs)
    with pytest.raises(ValueError, match=r'out_indices \(0, 9\) must be a non-empty subset'):
        BACKBONES[family](arch=_test_arch(family), out_indices=(0, 9))
    with pytest.raises(KeyError, match='unknown arch .huge.; known archs: '):
        BACKBONES[family](arch='huge')


@pytest.mark.parametrize('family', FAMILIES)
def test_frozen_stages_stay_frozen_through_train_and_norm_eval(family):
    backbone = _backbone(family, frozen_stages=2, norm_eval=True).train()
    groups = backbone.stage_prefixes()
    frozen, trained = tuple(p for g in groups[:3] for p in g), tuple(p for g in groups[3:] for p in g)
    for name, param in backbone.named_parameters():
        if name.startswith(frozen):
            assert not param.requires_grad, name
        elif name.startswith(trained):
            assert param.requires_grad, name
    for name, module in backbone.named_modules():
        if name and f'{name}.'.startswith(frozen):
            assert not module.training, name
        if isinstance(module, _BatchNorm):
            assert not module.training, name
    with pytest.raises(ValueError, match='frozen_stages=9'):
        BACKBONES[family](arch=_test_arch(family), frozen_stages=9)


@pytest.mark.parametrize('family', FAMILIES)
def test_strict_round_trip_through_a_saved_checkpoint(family, tmp_path):
    source = _backbone(family)
    path = _save(tmp_path, {'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()}})
    torch.manual_seed(1)
    target = BACKBONES[family](arch=_test_arch(family), init_cfg=dict(type='Pretrained', checkpoint=path))
    target.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


@pytest.mark.parametrize('family', FAMILIES)
def test_checkpoint_of_a_deeper_model_raises(family, tmp_path):
    backbone = _backbone(family)
    state = dict(backbone.state_dict())
    first = next(k for k in state if k.startswith(backbone.stage_prefixes()[1]))
    state[first.replace(backbone.stage_prefixes()[1][0], backbone.stage_prefixes()[1][0] + '99.', 1)] = state[first]
    path = _save(tmp_path, {'model': state})
    with pytest.raises(CheckpointMismatchError, match=r'weights that .* does not \(a deeper or wider model\?\)'):
        BACKBONES[family](arch=_test_arch(family), init_cfg=dict(type='Pretrained', checkpoint=path)).init_weights()


def test_a_larger_checkpoint_into_a_smaller_model_raises(tmp_path):
    """MLLA-S weights into an MLLA-T backbone: the extra blocks are an error, not ignored keys."""
    from tests.upstream_keys import upstream_state_dict
    small = upstream_state_dict(64, (3, 6, 21, 6), layout='classification')
    path = _save(tmp_path, {'model': small})
    with pytest.raises(CheckpointMismatchError, match=r'layers\.0\.blocks\.2\.'):
        BACKBONES['MLLA'](arch='tiny', init_cfg=dict(type='Pretrained', checkpoint=path)).init_weights()


def test_missing_file_raises_naming_it_and_the_opt_out(tmp_path):
    missing = str(tmp_path / 'nope.pth')
    backbone = BACKBONES['MLLA'](arch='test', init_cfg=dict(type='Pretrained', checkpoint=missing))
    with pytest.raises(FileNotFoundError, match=r'nope\.pth.*init_cfg=None'):
        backbone.init_weights()


def test_corrupted_file_raises_naming_it(tmp_path):
    path = tmp_path / 'broken.pth'
    torch.save({'model': _backbone('MLLA').state_dict()}, path)
    path.write_bytes(path.read_bytes()[:2000])
    backbone = BACKBONES['MLLA'](arch='test', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointReadError, match=r'cannot read checkpoint .*broken\.pth'):
        backbone.init_weights()


class NotAllowed:
    """A pickled object outside the allow-list: loading it would need to run its class's code."""


def test_pickled_code_is_refused_unless_opted_in(tmp_path):
    state = _backbone('MLLA').state_dict()
    path = _save(tmp_path, {'model': state, 'extra': NotAllowed()})
    init_cfg = dict(type='Pretrained', checkpoint=path)
    with pytest.raises(CheckpointReadError, match=r'outside the allow-list.*allow_code_execution=True'):
        BACKBONES['MLLA'](arch='test', init_cfg=init_cfg).init_weights()
    backbone = BACKBONES['MLLA'](arch='test', init_cfg=dict(init_cfg, allow_code_execution=True))
    backbone.init_weights()
    assert torch.equal(backbone.state_dict()['layers.0.blocks.0.in_proj.weight'],
                       state['layers.0.blocks.0.in_proj.weight'])


def test_upstream_training_configs_are_on_the_allow_list(tmp_path):
    """timm-style scripts pickle an argparse Namespace under 'args', Swin-style ones a yacs CfgNode under 'config'
    (saved here through the stand-in class under yacs' module path, as a real yacs CfgNode pickles)."""
    state = _backbone('MLLA').state_dict()
    config = CfgNode(MODEL=CfgNode(TYPE='mlla'))
    config.__dict__['__immutable__'] = True
    CfgNode.__module__, CfgNode.__qualname__ = 'yacs.config', 'CfgNode'
    import sys
    import types
    sys.modules['yacs'], sys.modules['yacs.config'] = types.ModuleType('yacs'), types.ModuleType('yacs.config')
    sys.modules['yacs.config'].CfgNode = CfgNode
    try:
        path = _save(tmp_path, {'model': state, 'args': argparse.Namespace(lr=1e-3), 'config': config})
    finally:
        CfgNode.__module__, CfgNode.__qualname__ = 'mlla_mm.utils.checkpoint', 'CfgNode'
        del sys.modules['yacs'], sys.modules['yacs.config']
    loaded = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    assert 'yacs.config.CfgNode' in loaded and 'argparse.Namespace' in loaded
    backbone = BACKBONES['MLLA'](arch='test', init_cfg=dict(type='Pretrained', checkpoint=path))
    backbone.init_weights()
    assert torch.equal(backbone.state_dict()['layers.0.blocks.0.in_proj.weight'],
                       state['layers.0.blocks.0.in_proj.weight'])


def test_registration_refuses_to_replace_another_module():
    from mmengine.registry import Registry
    registry = Registry('clash test')

    class Other(torch.nn.Module):
        pass

    registry.register_module(name='MLLA', module=Other)
    with pytest.raises(KeyError, match=r"already has 'MLLA' from .*Other.*will not replace it with .*MLLA"):
        mlla_mm.mm.register(registry, 'MLLA', BACKBONES['MLLA'])
    mlla_mm.mm.register(registry, 'VMamba', BACKBONES['VMamba'])
    mlla_mm.mm.register(registry, 'VMamba', BACKBONES['VMamba'])  # the same class again is fine
    assert registry.get('VMamba') is BACKBONES['VMamba']


def test_timm_backbone_gives_nchw_maps_and_loads_a_local_file(tmp_path):
    backbone = TimmBackbone('mambaout_femto', out_indices=(1, 2, 3)).eval()  # a channels-last timm model
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, c, 64 // r, 96 // r) for c, r in
                                              zip(backbone.out_channels, (8, 16, 32))]
    import timm
    source = timm.create_model('mambaout_femto')
    path = _save(tmp_path, source.state_dict())
    loaded = TimmBackbone('mambaout_femto', out_indices=(1, 2, 3), init_cfg=dict(type='Pretrained', checkpoint=path))
    loaded.init_weights()
    key = next(k for k in loaded.model.state_dict() if k.endswith('weight'))
    assert any(torch.equal(loaded.model.state_dict()[key], v) for v in source.state_dict().values())
    with pytest.raises(KeyError, match="unknown timm model 'no_such_net'"):
        TimmBackbone('no_such_net')


def test_compile_option_runs_the_backbone_as_one_graph(monkeypatch):
    monkeypatch.setenv('MLLA_MM_BACKEND', 'torch')
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    compiled = _backbone('MLLA', compile=dict(backend=counting_backend)).eval()
    eager = _backbone('MLLA').eval()
    # Both sizes keep every conv input above 20480 elements, where PyTorch's conv guards (layout choice) and would
    # recompile once; detection and segmentation sizes are far above it.
    with torch.no_grad():
        for size in ((192, 256), (201, 247)):
            x = torch.randn(1, 3, *size)
            for a, b in zip(compiled(x), eager(x)):
                torch.testing.assert_close(a, b)
    assert len(graphs) == 1
