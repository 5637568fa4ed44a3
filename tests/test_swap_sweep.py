"""`--backbone` over the packaged recipes: every mmdet/mmseg config family below that has a ResNet, Swin, CSP or
MSCAN backbone is swapped to `mlla_test` and to `vmamba_test`; it must build and run `extract_feat` on a small
rectangular input. Twelve of them (two-stage, one-stage, DETR-like, MaskFormer/Mask2Former, YOLOX, RTMDet, UperNet,
SegFormer's head, K-Net, SegNeXt) also take one training step. README.md lists the families and the refused ones."""
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope

import mlla_mm.mm
from mlla_mm.mm.runner import resolve_config

DET = 'mmdet::{}'
SEG = 'mmseg::{}'
RECIPES = [DET.format(r) for r in (
    'atss/atss_r50_fpn_1x_coco.py', 'autoassign/autoassign_r50-caffe_fpn_1x_coco.py',
    'cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py', 'centernet/centernet-update_r50-caffe_fpn_ms-1x_coco.py',
    'condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py', 'conditional_detr/conditional-detr_r50_8xb2-50e_coco.py',
    'dab_detr/dab-detr_r50_8xb2-50e_coco.py', 'ddod/ddod_r50_fpn_1x_coco.py',
    'deformable_detr/deformable-detr_r50_16xb2-50e_coco.py', 'dino/dino-4scale_r50_8xb2-12e_coco.py',
    'double_heads/dh-faster-rcnn_r50_fpn_1x_coco.py', 'dyhead/atss_r50_fpn_dyhead_1x_coco.py',
    'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', 'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
    'foveabox/fovea_r50_fpn_4xb4-1x_coco.py', 'free_anchor/freeanchor_r50_fpn_1x_coco.py',
    'fsaf/fsaf_r50_fpn_1x_coco.py', 'gfl/gfl_r50_fpn_1x_coco.py', 'grid_rcnn/grid-rcnn_r50_fpn_gn-head_2x_coco.py',
    'htc/htc_r50_fpn_1x_coco.py', 'mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py',
    'mask2former/mask2former_r50_8xb2-lsj-50e_coco.py', 'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    'maskformer/maskformer_r50_ms-16xb1-75e_coco.py', 'ms_rcnn/ms-rcnn_r50_fpn_1x_coco.py',
    'paa/paa_r50_fpn_1x_coco.py', 'pafpn/faster-rcnn_r50_pafpn_1x_coco.py',
    'panoptic_fpn/panoptic-fpn_r50_fpn_1x_coco.py', 'point_rend/point-rend_r50-caffe_fpn_ms-1x_coco.py',
    'queryinst/queryinst_r50_fpn_1x_coco.py', 'reppoints/reppoints-moment_r50_fpn_1x_coco.py',
    'retinanet/retinanet_r50_fpn_1x_coco.py', 'rtmdet/rtmdet_tiny_8xb32-300e_coco.py',
    'sabl/sabl-retinanet_r50_fpn_1x_coco.py', 'scnet/scnet_r50_fpn_1x_coco.py', 'solo/solo_r50_fpn_1x_coco.py',
    'solov2/solov2_r50_fpn_1x_coco.py', 'sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py',
    'swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', 'tood/tood_r50_fpn_1x_coco.py', 'vfnet/vfnet_r50_fpn_1x_coco.py',
    'yolact/yolact_r50_1xb8-55e_coco.py', 'yolox/yolox_s_8xb8-300e_coco.py')] + [SEG.format(r) for r in (
    'ann/ann_r50-d8_4xb4-80k_ade20k-512x512.py', 'apcnet/apcnet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'ccnet/ccnet_r50-d8_4xb4-80k_ade20k-512x512.py', 'danet/danet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'deeplabv3/deeplabv3_r50-d8_4xb4-80k_ade20k-512x512.py',
    'deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_ade20k-512x512.py',
    'dmnet/dmnet_r50-d8_4xb4-80k_ade20k-512x512.py', 'encnet/encnet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'fcn/fcn_r50-d8_4xb4-80k_ade20k-512x512.py', 'gcnet/gcnet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'isanet/isanet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'knet/knet-s3_r50-d8_upernet_8xb2-adamw-80k_ade20k-512x512.py',
    'mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py',
    'maskformer/maskformer_r50-d32_8xb2-160k_ade20k-512x512.py',
    'nonlocal_net/nonlocal_r50-d8_4xb4-80k_ade20k-512x512.py', 'point_rend/pointrend_r50_4xb4-160k_ade20k-512x512.py',
    'psanet/psanet_r50-d8_4xb4-80k_ade20k-512x512.py', 'pspnet/pspnet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py',
    'segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py', 'sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py',
    'swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
    'upernet/upernet_r50_4xb4-160k_ade20k-512x512.py')]
TRAINED = {DET.format('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'), DET.format('retinanet/retinanet_r50_fpn_1x_coco.py'),
           DET.format('deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'),
           DET.format('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'), DET.format('yolox/yolox_s_8xb8-300e_coco.py'),
           DET.format('rtmdet/rtmdet_tiny_8xb32-300e_coco.py'),
           SEG.format('mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py'),
           SEG.format('maskformer/maskformer_r50-d32_8xb2-160k_ade20k-512x512.py'),
           SEG.format('upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'),
           SEG.format('segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py'),
           SEG.format('knet/knet-s3_r50-d8_upernet_8xb2-adamw-80k_ade20k-512x512.py'),
           SEG.format('segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py')}
SIZE = (64, 96)


def _build(recipe, backbone):
    library = recipe.split('::')[0]
    cfg = mlla_mm.mm.swap_backbone(Config.fromfile(resolve_config(recipe)), backbone)
    init_default_scope(library)
    from mmengine.registry import MODELS
    return revert_sync_batchnorm(MODELS.build(cfg.model)), library


def test_the_sweep_covers_at_least_40_recipes_and_the_twelve_kinds():
    assert len(RECIPES) >= 40 and TRAINED <= set(RECIPES) and len(TRAINED) == 12


@pytest.mark.parametrize('backbone', ['mlla_test', pytest.param('vmamba_test', marks=pytest.mark.slow)])
@pytest.mark.parametrize('recipe', RECIPES)
def test_swapped_recipe_builds_and_extracts_features(recipe, backbone):
    model, _ = _build(recipe, backbone)
    model.eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, *SIZE))
    feats = feats[0] if isinstance(feats, tuple) and isinstance(feats[0], (tuple, list)) else feats
    assert all(torch.isfinite(f).all() for f in feats if isinstance(f, torch.Tensor))


@pytest.mark.parametrize('recipe', sorted(TRAINED))
def test_swapped_recipe_trains_one_step(recipe, mm_batch):
    torch.manual_seed(0)
    model, library = _build(recipe, 'mlla_test')
    model.train()
    # YOLOX's batch resize reads the iteration from the message hub, as inside a runner.
    MessageHub.get_current_instance().update_info('iter', 0)
    batch = mm_batch(library, batch=2, size=SIZE, with_mask='mask-rcnn' in recipe)
    data = model.data_preprocessor(batch, training=True)
    losses = model(**data, mode='loss')
    total = sum(v for k, v in losses.items() if 'loss' in k for v in (v if isinstance(v, list) else [v]))
    assert torch.isfinite(total), losses
    total.backward()
    grads = [p.grad for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize('recipe', ['mmseg::ocrnet/ocrnet_hr18_4xb4-80k_ade20k-512x512.py',
                                    'mmseg::hrnet/fcn_hr18_4xb4-80k_ade20k-512x512.py'])
def test_hrnet_recipes_are_refused_clearly(recipe):
    with pytest.raises(ValueError, match=r'model\.backbone \(HRNet\) cannot be replaced: HRNet is multi-branch'):
        mlla_mm.mm.swap_backbone(Config.fromfile(resolve_config(recipe)), 'mlla_test')
