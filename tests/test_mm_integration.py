"""The MLLA backbone inside real MMDetection / MMSegmentation models built from the shipped configs."""
import torch
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.registry import init_default_scope

import mlla_mm.mm
from mlla_mm.mm import BACKBONES

DET_CONFIG = 'configs/mmdet/mask-rcnn_mlla-t_fpn_1x_coco.py'
SEG_CONFIG = 'configs/mmseg/upernet_mlla-t_8xb2-160k_ade20k-512x512.py'


def test_registered_in_both_libraries():
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    assert set(mlla_mm.mm.REGISTERED_IN) == {'mmdet', 'mmseg'}
    for registry in (DET_MODELS, SEG_MODELS):
        backbone = registry.build(dict(type='MLLA', arch='test'))
        assert isinstance(backbone, BACKBONES['MLLA'])


def _without_scope(value):
    """Config values without the `_scope_` keys that cross-package inheritance adds."""
    if isinstance(value, dict):
        return {k: _without_scope(v) for k, v in value.items() if k != '_scope_'}
    if isinstance(value, (list, tuple)):
        return [_without_scope(v) for v in value]
    return value


def test_det_config_differs_from_base_only_in_backbone_and_optimizer():
    cfg = Config.fromfile(DET_CONFIG)
    base = get_config('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    assert cfg.model.backbone.type == 'MLLA' and 'depth' not in cfg.model.backbone  # _delete_ worked
    assert cfg.model.neck.in_channels == [64, 128, 256, 512]
    assert cfg.model.neck.out_channels == base.model.neck.out_channels
    for key in ('train_dataloader', 'val_dataloader', 'train_cfg', 'param_scheduler'):
        assert _without_scope(cfg[key]) == _without_scope(base[key]), key
    assert _without_scope(cfg.model.roi_head) == _without_scope(base.model.roi_head)
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)


def test_mask_rcnn_loss_and_predict_step(mm_batch):
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(DET_CONFIG)
    cfg.model.backbone.update(arch='test', init_cfg=None)
    cfg.model.neck.in_channels = [32, 64, 128, 256]
    model = MODELS.build(cfg.model)
    model.init_weights()
    data = model.data_preprocessor(mm_batch('mmdet', batch=1, size=(128, 160)), training=True)
    losses = model(**data, mode='loss')
    total = sum(v for k, v in losses.items() if 'loss' in k for v in (v if isinstance(v, list) else [v]))
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.layers[0].blocks[0].attn.qk.weight.grad is not None
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(mm_batch('mmdet', batch=1, size=(128, 160)), training=False),
                        mode='predict')
    assert 'bboxes' in results[0].pred_instances and 'masks' in results[0].pred_instances


def test_upernet_loss_and_predict_step(mm_batch):
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    cfg = Config.fromfile(SEG_CONFIG)
    cfg.model.backbone.update(arch='test', init_cfg=None)
    cfg.model.decode_head.in_channels = [32, 64, 128, 256]
    cfg.model.auxiliary_head.in_channels = 128
    # SyncBN needs a process group; a single CPU process uses plain BN.
    cfg.model.decode_head.norm_cfg = cfg.model.auxiliary_head.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.data_preprocessor.size = (96, 128)
    model = MODELS.build(cfg.model)
    model.init_weights()
    size = (96, 128)

    def batch():
        return mm_batch('mmseg', batch=2, size=size, num_classes=150)

    losses = model(**model.data_preprocessor(batch(), training=True), mode='loss')
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(batch(), training=False), mode='predict')
    assert results[0].pred_sem_seg.data.shape == (1, *size)


def test_mask_rcnn_mlla_t_forward_at_800x1216(mm_batch):
    """The foundation's 'done when': stock Mask R-CNN + MLLA-T, one forward on a 1x3x800x1216 input (CPU)."""
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(DET_CONFIG)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).eval()
    model.init_weights()
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 800, 1216))
        assert [tuple(f.shape) for f in feats] == [(1, 256, 200 // 2 ** i, 304 // 2 ** i) for i in range(4)] + [
            (1, 256, 13, 19)]
        data = model.data_preprocessor(mm_batch('mmdet', batch=1, size=(800, 1216)), training=False)
        results = model(**data, mode='predict')
    assert results[0].pred_instances.bboxes.shape[-1] == 4
