"""Every config under configs/ loads, builds with its backbone shrunk to the tiny 'test' arch, and trains one step."""
import glob
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

import mlla_mm.mm  # noqa: F401  registers the backbones
from mlla_mm.mm.runner import detect_library

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True))
IMAGE_SIZE = 64


def shrink_backbone(cfg, registry):
    """Set the backbone's arch to 'test' (no pretrained file) and every consumer's in_channels to the channels the
    tiny backbone really outputs, found by running it once."""
    backbone = cfg.model.backbone
    if 'arch' not in backbone:
        raise AssertionError(f'backbone {backbone.get("type")} has no arch to shrink to the test variant')
    backbone.arch, backbone.init_cfg = 'test', None
    with torch.no_grad():
        outs = registry.build(backbone)(torch.zeros(1, 3, 64, 64))
    channels = [out.shape[1] for out in outs]
    if cfg.model.get('neck') is not None:
        assert len(cfg.model.neck.in_channels) == len(channels), 'neck levels differ from the backbone outputs'
        cfg.model.neck.in_channels = channels
    else:
        for head in (cfg.model.get('decode_head'), cfg.model.get('auxiliary_head')):
            if head is not None:
                index = head.in_index
                head.in_channels = [channels[i] for i in index] if isinstance(index, (list, tuple)) \
                    else channels[index]
    return channels


def shrink_heads(model_cfg):
    """Cheaper heads for a CPU step: fewer proposals and sampled RoIs (two-stage detectors), and 32-channel decode /
    auxiliary heads (segmentors; UperNet's 512 channels dominate the step otherwise)."""
    for head in (model_cfg.get('decode_head'), model_cfg.get('auxiliary_head')):
        if head is not None:
            head.channels = 32
    train_cfg = model_cfg.get('train_cfg') or {}
    if 'rpn_proposal' in train_cfg:
        train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
    stages = train_cfg.get('rcnn') or []
    for stage in stages if isinstance(stages, list) else [stages]:
        stage.sampler.num = 32


def num_classes(model_cfg):
    if 'roi_head' in model_cfg:
        bbox_head = model_cfg.roi_head.bbox_head
        return (bbox_head[0] if isinstance(bbox_head, list) else bbox_head).num_classes
    if 'bbox_head' in model_cfg:
        return model_cfg.bbox_head.num_classes
    return model_cfg.decode_head.num_classes


def test_configs_found():
    names = {os.path.relpath(path, ROOT) for path in CONFIGS}
    assert {'configs/mmdet/mask-rcnn_mlla-t_fpn_1x_coco.py', 'configs/mmdet/mask-rcnn_mlla-t_fpn_ms-crop-1x_coco.py',
            'configs/mmseg/upernet_mlla-b_8xb2-160k_ade20k-512x512.py',
            'configs/demo/mask-rcnn_mlla-test_fpn_demo.py', 'configs/demo/fpn_mlla-test_demo.py'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=[os.path.relpath(p, os.path.join(ROOT, 'configs')) for p in CONFIGS])
def test_config_builds_and_trains_one_step(path, mm_batch):
    cfg = Config.fromfile(path)
    library = detect_library(cfg)
    assert cfg.default_scope == library
    init_default_scope(library)
    from mmengine.registry import MODELS
    channels = shrink_backbone(cfg, MODELS)
    assert len(channels) == len(cfg.model.backbone.out_indices)
    shrink_heads(cfg.model)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    # The paramwise rule of every recipe: no weight decay on norms.
    norm_groups = [g for g in optim_wrapper.optimizer.param_groups if g['weight_decay'] == 0]
    assert norm_groups, 'no parameter group without weight decay (norms)'
    classes = num_classes(cfg.model)
    batch = mm_batch(library, batch=2, size=IMAGE_SIZE, num_classes=classes)
    before = [p.detach().clone() for p in model.backbone.parameters()]
    losses = model.train_step(batch, optim_wrapper)
    assert losses and all(torch.isfinite(v).all() for v in losses.values())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.backbone.parameters())), \
        'the training step did not update the backbone'


METAFILES = sorted(glob.glob(os.path.join(ROOT, 'configs', '*', 'metafile.yml')))


def test_metafiles_list_every_config_once():
    """Every detection / segmentation config belongs to the model index of its family, once."""
    import yaml
    listed = []
    for metafile in METAFILES:
        with open(metafile) as f:
            listed += [model['Config'] for model in yaml.safe_load(f)['Models']]
    configs = [os.path.relpath(p, ROOT) for p in CONFIGS if '/demo/' not in p]
    assert sorted(listed) == sorted(configs), set(listed) ^ set(configs)


@pytest.mark.parametrize('metafile', METAFILES, ids=[os.path.basename(os.path.dirname(m)) for m in METAFILES])
def test_metafile_lists_every_config_of_its_family(metafile):
    """mmdet's model-index format: each entry names an existing config of its collection, by the config's name; every
    config of the family is listed; published results are numbers."""
    import yaml
    with open(metafile) as f:
        index = yaml.safe_load(f)
    (collection,) = [c['Name'] for c in index['Collections']]
    listed = set()
    for model in index['Models']:
        assert model['In Collection'] == collection
        assert os.path.isfile(os.path.join(ROOT, model['Config'])), model['Config']
        assert model['Name'] == os.path.splitext(os.path.basename(model['Config']))[0]
        dataset = 'COCO' if model['Config'].startswith('configs/mmdet/') else 'ADE20K'
        assert model['Metadata']['Training Data'] == dataset, model['Name']
        for result in model.get('Results', []):
            assert result['Dataset'] == dataset and result['Metrics'], model['Name']
            assert all(isinstance(v, float) and 0 < v < 100 for v in result['Metrics'].values()), model['Name']
        listed.add(model['Config'])
    family = {os.path.relpath(p, ROOT) for p in CONFIGS if f'_{collection.lower()}-' in os.path.basename(p)
              and '/demo/' not in p}
    assert family and family == listed, family ^ listed
