"""The VMamba backbone for MMDetection / MMSegmentation: outputs, freezing, pretrained loading, configs, and one
training step of Mask R-CNN and UperNet with the test arch."""
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mlla_mm.mm
from mlla_mm.mm import BACKBONES
from mlla_mm.models import VMAMBA_ARCHS, create_model
from mlla_mm.utils import CheckpointMismatchError
from tests.upstream_vmamba_keys import upstream_vmamba_shapes, upstream_vmamba_state_dict

DET_CONFIGS = {f'configs/mmdet/mask-rcnn_vmamba-{s}_fpn_1x_coco.py': a
               for s, a in (('t', 'tiny'), ('s', 'small'), ('b', 'base'))}
DET_CONFIGS['configs/mmdet/mask-rcnn_vmamba-t_fpn_ms-crop-3x_coco.py'] = 'tiny'
SEG_CONFIGS = {f'configs/mmseg/upernet_vmamba-{s}_8xb2-160k_ade20k-512x512.py': a
               for s, a in (('t', 'tiny'), ('s', 'small'), ('b', 'base'))}
TEST_CHANNELS = [16, 32, 64, 128]
VMambaBackbone = BACKBONES['VMamba']


def test_registered_in_both_libraries_with_short_names():
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    for registry in (DET_MODELS, SEG_MODELS):
        assert isinstance(registry.build(dict(type='VMamba', arch='test')), VMambaBackbone)
    assert mlla_mm.mm.BACKBONE_NAMES['vmamba_s'] == dict(type='VMamba', arch='small')


def test_frozen_stages_stay_frozen_through_train():
    backbone = VMambaBackbone(arch='test', frozen_stages=2).train()
    frozen = [backbone.patch_embed, backbone.layers[0], backbone.layers[1], backbone.outnorm0, backbone.outnorm1]
    for module in frozen:
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    for module in (backbone.layers[2], backbone.layers[3], backbone.outnorm2):
        assert module.training and all(p.requires_grad for p in module.parameters())
    sum(o.sum() for o in backbone(torch.randn(1, 3, 32, 32))).backward()
    assert backbone.layers[0].blocks[0].op.A_logs.grad is None
    assert backbone.layers[2].blocks[0].op.A_logs.grad is not None


def test_upstream_backbone_layout_loads_strictly():
    """Backbone_VSSM's keys: the trunk plus outnorm0..3 and no classifier (reference/vmamba.md §4.3)."""
    settings = {k: VMAMBA_ARCHS['tiny'][k] for k in ('embed_dim', 'depths', 'ssm_ratio')}
    backbone = VMambaBackbone(arch='tiny')
    assert {k: tuple(v.shape) for k, v in backbone.state_dict().items()} == upstream_vmamba_shapes(
        **settings, layout='backbone')
    settings = {k: VMAMBA_ARCHS['test'][k] for k in ('embed_dim', 'depths', 'ssm_ratio')}
    VMambaBackbone(arch='test').load_state_dict(upstream_vmamba_state_dict(**settings, layout='backbone'), strict=True)


def test_init_cfg_loads_an_upstream_classification_checkpoint(tmp_path):
    settings = {k: VMAMBA_ARCHS['test'][k] for k in ('embed_dim', 'depths', 'ssm_ratio')}
    state_dict = upstream_vmamba_state_dict(**settings)
    path = tmp_path / 'vssm.pth'
    torch.save({'model': state_dict, 'epoch': 299}, path)
    backbone = VMambaBackbone(arch='test', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    backbone.init_weights()
    for key, value in backbone.state_dict().items():
        if not key.startswith('outnorm'):  # new in a classification checkpoint
            assert torch.equal(value, state_dict[key]), key


def test_init_cfg_raises_on_a_checkpoint_of_another_size(tmp_path):
    # A T [s2l5]-style mix-up (issues #205/#238 upstream): same keys, other ssm_ratio, so other shapes.
    path = tmp_path / 'other.pth'
    torch.save({'model': create_model('vmamba_test', ssm_ratio=1.0).state_dict()}, path)
    backbone = VMambaBackbone(arch='test', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    expected = r'layers.0.blocks.0.op.x_proj_weight: checkpoint \(4, 3, 16\) vs model \(4, 3, 32\)'
    with pytest.raises(CheckpointMismatchError, match=expected):
        backbone.init_weights()


@pytest.mark.parametrize('path,arch', list(DET_CONFIGS.items()) + list(SEG_CONFIGS.items()))
def test_configs_match_the_backbone_channels(path, arch):
    cfg = Config.fromfile(path)
    backbone = cfg.model.backbone
    assert backbone.type == 'VMamba' and backbone.arch == arch and 'embed_dims' not in backbone  # _delete_ worked
    channels = [VMAMBA_ARCHS[arch]['embed_dim'] * 2 ** i for i in range(4)]
    if 'neck' in cfg.model:
        assert cfg.model.neck.in_channels == channels
        assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    else:
        assert cfg.model.decode_head.in_channels == channels
        assert cfg.model.auxiliary_head.in_channels == channels[2]
        assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)
    assert backbone.drop_path_rate == VMAMBA_ARCHS[arch]['drop_path_rate']


def _one_step(model, data):
    losses = model(**data, mode='loss')
    total = sum(v for k, v in losses.items() if 'loss' in k for v in (v if isinstance(v, list) else [v]))
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.layers[0].blocks[0].op.x_proj_weight.grad is not None


def test_mask_rcnn_one_loss_step(mm_batch):
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile('configs/mmdet/mask-rcnn_vmamba-t_fpn_1x_coco.py')
    cfg.model.backbone.update(arch='test', init_cfg=None)
    cfg.model.neck.in_channels = TEST_CHANNELS
    model = MODELS.build(cfg.model)
    model.init_weights()
    _one_step(model, model.data_preprocessor(mm_batch('mmdet', batch=1, size=(64, 96)), training=True))


def test_upernet_one_loss_step(mm_batch):
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    size = (64, 96)
    cfg = Config.fromfile('configs/mmseg/upernet_vmamba-t_8xb2-160k_ade20k-512x512.py')
    cfg.model.backbone.update(arch='test', init_cfg=None)
    cfg.model.decode_head.in_channels = TEST_CHANNELS
    cfg.model.auxiliary_head.in_channels = TEST_CHANNELS[2]
    # SyncBN needs a process group; a single CPU process uses plain BN.
    cfg.model.decode_head.norm_cfg = cfg.model.auxiliary_head.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.data_preprocessor.size = size
    model = MODELS.build(cfg.model)
    model.init_weights()
    _one_step(model, model.data_preprocessor(mm_batch('mmseg', batch=2, size=size, num_classes=150), training=True))
