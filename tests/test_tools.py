"""End-to-end smoke runs of the tools on a few tiny demo images: train then test (detection and segmentation),
torchrun with 2 CPU processes, resume, get_flops and convert_checkpoint."""
import os
import pickle
import re
import subprocess
import sys

import pytest
import torch

from mlla_mm.utils.demo_data import make_demo_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET_DEMO = os.path.join(ROOT, 'configs', 'demo', 'mask-rcnn_mlla-test_fpn_demo.py')
SEG_DEMO = os.path.join(ROOT, 'configs', 'demo', 'fpn_mlla-test_demo.py')


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('demo_data'))
    make_demo_data(root, train=4, val=2, size=64, min_radius=8, max_radius=20, log=lambda *_: None)
    return root


def tiny_config(tmp_path, demo, data_root, iters=2):
    """A config file inheriting a demo config, pointed at the tiny data set, with a 2-iteration schedule."""
    if demo == DET_DEMO:
        coco = f'{data_root}/coco/'
        data = f'''
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root='{coco}', filter_cfg=dict(min_size=0)))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(data_root='{coco}'))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file='{coco}annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs={iters // 2}, val_interval={iters // 2})
default_hooks = dict(checkpoint=dict(interval=1), logger=dict(interval=1))
'''
    else:
        ade = f'{data_root}/ade'
        data = f'''
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(data_root='{ade}'))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(data_root='{ade}'))
test_dataloader = val_dataloader
train_cfg = dict(max_iters={iters}, val_interval={iters})
default_hooks = dict(checkpoint=dict(interval=1), logger=dict(interval=1))
'''
    path = tmp_path / f'tiny_{os.path.basename(demo)}'
    path.write_text(f"_base_ = '{demo}'\ndemo_data = '{data_root}'\n{data}")
    return str(path)


def run(*args, env=None, timeout=600):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})})
    output = result.stdout + result.stderr
    assert result.returncode == 0, f'{args} failed:\n{output[-5000:]}'
    return output


@pytest.mark.parametrize('demo, metrics', [(DET_DEMO, ('coco/bbox_mAP', 'coco/segm_mAP')), (SEG_DEMO, ('mIoU',))],
                         ids=['detection', 'segmentation'])
def test_train_then_test(tmp_path, data_root, demo, metrics):
    config = tiny_config(tmp_path, demo, data_root)
    work_dir = tmp_path / 'work'
    output = run('tools/train.py', config, '--work-dir', str(work_dir))
    assert re.search(r'Iter\(train\) \[2/2\]|Epoch\(train\)\s+\[1\]\[2/2\]', output), output[-3000:]
    for metric in metrics:
        assert metric in output, f'{metric} missing from the validation output'
    checkpoint = work_dir / ('epoch_1.pth' if demo == DET_DEMO else 'iter_2.pth')
    assert checkpoint.is_file()
    out = tmp_path / 'predictions.pkl'
    output = run('tools/test.py', config, str(checkpoint), '--work-dir', str(tmp_path / 'test'), '--out', str(out),
                 '--show-dir', 'drawn')
    for metric in metrics:
        assert re.search(re.escape(metric) + r'\W+\d', output), f'{metric} missing from the test output'
    assert out.is_file() and out.stat().st_size > 0
    assert any(name.endswith(('.jpg', '.png')) for _, _, files in os.walk(tmp_path / 'test') for name in files)


def test_resume_continues_iteration_and_optimizer(tmp_path, data_root):
    config = tiny_config(tmp_path, SEG_DEMO, data_root, iters=2)
    work_dir = tmp_path / 'work'
    run('tools/train.py', config, '--work-dir', str(work_dir), '--cfg-options', 'train_cfg.val_interval=100')
    saved = torch.load(work_dir / 'iter_1.pth', map_location='cpu', weights_only=False)
    assert saved['meta']['iter'] == 1 and saved['optimizer']['state'], 'iteration 1 checkpoint lacks optimizer state'
    # Resume from iteration 1 with a 3-iteration schedule: it must run iterations 2 and 3 only.
    output = run('tools/train.py', config, '--work-dir', str(tmp_path / 'resumed'), '--resume',
                 str(work_dir / 'iter_1.pth'), '--cfg-options', 'train_cfg.max_iters=3', 'train_cfg.val_interval=100')
    assert 'resumed epoch: 0, iter: 1' in output
    assert 'Iter(train) [1/3]' not in output and 'Iter(train) [2/3]' in output and 'Iter(train) [3/3]' in output
    resumed = torch.load(tmp_path / 'resumed' / 'iter_3.pth', map_location='cpu', weights_only=False)
    assert resumed['meta']['iter'] == 3
    # AdamW's step counter carries on from the saved state instead of restarting at 0.
    steps = {int(s['step']) for s in resumed['optimizer']['state'].values()}
    assert steps == {3}, steps


def test_trust_checkpoints_loosens_weights_only_for_trusted_files_only(tmp_path):
    from mmengine.logging import HistoryBuffer
    from mmengine.runner import CheckpointLoader
    from mmengine.runner.checkpoint import _load_checkpoint
    from mlla_mm.mm.runner import trust_checkpoints
    checkpoint = {'meta': {'iter': 1}, 'message_hub': {'loss': HistoryBuffer([1.0], [1])}}
    own, other = tmp_path / 'work' / 'iter_1.pth', tmp_path / 'elsewhere.pth'
    own.parent.mkdir()
    torch.save(checkpoint, own)
    torch.save(checkpoint, other)
    default_loader = CheckpointLoader._schemes['']
    try:
        trust_checkpoints(str(tmp_path / 'work'))
        assert _load_checkpoint(str(own))['meta']['iter'] == 1
        with pytest.raises(pickle.UnpicklingError):
            _load_checkpoint(str(other))
    finally:
        CheckpointLoader._schemes[''] = default_loader


def test_torchrun_two_cpu_processes(tmp_path, data_root):
    config = tiny_config(tmp_path, DET_DEMO, data_root)
    work_dir = tmp_path / 'work'
    output = run('-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29531', 'tools/train.py',
                 config, '--launcher', 'pytorch', '--work-dir', str(work_dir),
                 '--cfg-options', 'train_dataloader.batch_size=1', 'train_cfg.val_interval=100')
    assert 'Distributed training: True' in output and 'GPU number: 2' in output, output[-3000:]  # 2 processes
    assert re.search(r'Epoch\(train\)\s+\[1\]\[2/2\]', output), output[-3000:]
    assert (work_dir / 'epoch_1.pth').is_file()


def test_unknown_config_name_is_a_clear_error():
    from mlla_mm.mm.runner import resolve_config
    with pytest.raises(FileNotFoundError, match='mmdet has no config'):
        resolve_config('mmdet::mask_rcnn/no-such-config.py')
    with pytest.raises(ValueError, match='unknown package'):
        resolve_config('mmpose::x.py')
    with pytest.raises(FileNotFoundError, match='config file not found'):
        resolve_config('configs/nothing.py')
    assert resolve_config('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py').endswith('mask-rcnn_r50_fpn_1x_coco.py')


def test_get_flops_backbone_counts_linear_attention():
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    from get_flops import main
    result = main(['mlla_test', '--shape', '64', '96'])
    from mlla_mm.models import create_model
    model = create_model('mlla_test', features_only=True)
    assert result['params'] == sum(p.numel() for p in model.parameters())
    # Analytic linear attention: stage i has (64/4/2^i) x (96/4/2^i) tokens, C = 32 * 2^i, head dim 32.
    expected = sum(2 * (16 >> i) * (24 >> i) * (32 << i) * 32 + (16 >> i) * (24 >> i) * (32 << i) for i in range(4))
    assert result['linear_attention'] == expected
    assert result['linear_attention_traced'] == pytest.approx(expected, rel=0.01)
    assert result['flops'] > result['linear_attention'] > 0


def test_get_flops_config(capsys):
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    from get_flops import main
    result = main([SEG_DEMO, '--shape', '64'])
    printed = capsys.readouterr().out
    assert 'input: 1 x 3 x 64 x 64 (mmseg)' in printed and 'backbone' in printed
    assert result['flops'] > result['linear_attention'] > 0


def test_get_flops_takes_the_benchmark_names():
    """get_flops builds through mlla_mm.benchmark.build_subject: timm and reference names, and the known ones listed."""
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    from get_flops import main
    import timm
    result = main(['timm:convnext_atto', '--shape', '64'])
    trunk = timm.create_model('convnext_atto', features_only=True)
    assert result['params'] == sum(p.numel() for p in trunk.parameters())
    assert result['flops'] > 0 and result['linear_attention'] == 0
    with pytest.raises(ValueError, match="unknown model 'no_such_net'.*mlla_t.*swin_t.*timm:NAME"):
        main(['no_such_net'])


def test_convert_checkpoint(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    from convert_checkpoint import main
    from mlla_mm.mm import BACKBONES
    from mlla_mm.models import create_model
    from mlla_mm.utils import CheckpointMismatchError
    classifier = create_model('mlla_test', num_classes=10)
    state = {f'module.{k}': v for k, v in classifier.state_dict().items()}
    state['layers.0.blocks.0.attn.rope.rotations'] = torch.zeros(16, 16, 16, 2)  # upstream's RoPE buffer
    src, dst = tmp_path / 'upstream.pth', tmp_path / 'backbone.pth'
    torch.save({'model': state, 'epoch': 300}, src)
    main([str(src), str(dst), '--model', 'mlla_test'])
    converted = torch.load(dst, map_location='cpu', weights_only=True)['state_dict']
    assert not any(k.startswith(('head.', 'norm.', 'module.', 'norm0.')) or 'rope' in k for k in converted)
    backbone = BACKBONES['MLLA'](arch='test', init_cfg=dict(type='Pretrained', checkpoint=str(dst)))
    backbone.init_weights()
    for key, value in converted.items():
        assert torch.equal(backbone.state_dict()[key], value), key
    with pytest.raises(CheckpointMismatchError, match='does not fit'):
        main([str(src), str(tmp_path / 'wrong.pth'), '--model', 'mlla_t'])
    timm_src = tmp_path / 'convnext.pth'
    import timm
    torch.save(timm.create_model('convnext_atto').state_dict(), timm_src)
    main([str(timm_src), str(tmp_path / 'convnext_backbone.pth'), '--model', 'timm:convnext_atto'])
    assert torch.load(tmp_path / 'convnext_backbone.pth', weights_only=True)['state_dict']


def test_train_stock_recipe_with_swapped_backbone(tmp_path, data_root):
    """Issue 7's 'done when': a stock mmdet recipe trains on the demo data with --backbone, no config written."""
    coco = f'{data_root}/coco/'
    classes = '(circle,square,triangle)'
    data = []
    for split, folder in (('train', 'train'), ('val', 'val')):
        loader = f'{split}_dataloader'
        data += [f'{loader}.dataset.data_root={coco}', f'{loader}.dataset.ann_file=annotations/instances_{split}.json',
                 f'{loader}.dataset.data_prefix.img={folder}/', f'{loader}.dataset.metainfo.classes={classes}',
                 f'{loader}.num_workers=0', f'{loader}.persistent_workers=False', f'{loader}.batch_size=2']
    output = run('tools/train.py', 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', '--backbone', 'mlla_test',
                 '--work-dir', str(tmp_path / 'work'), '--cfg-options', *data,
                 'train_dataloader.dataset.filter_cfg.min_size=0',
                 'train_dataloader.dataset.pipeline.2.scale=(128,128)', 'val_dataloader.dataset.pipeline.1.scale=(128,128)',
                 f'val_evaluator.ann_file={coco}annotations/instances_val.json', 'model.roi_head.bbox_head.num_classes=3',
                 'train_cfg.max_epochs=1', 'default_hooks.logger.interval=1')
    assert 'swap_backbone: model.backbone: MLLA (mlla_test)' in output
    assert re.search(r'Epoch\(train\)\s+\[1\]\[2/2\]', output), output[-3000:]
    assert re.search(r'coco/bbox_mAP: -?\d', output), output[-3000:]
