"""tools/ablate.py: a real (tiny) run of two presets, and the schedule shortening on both demo recipes."""
import csv
import json
import math
import os
import sys

import pytest
from mmengine.config import Config

from mlla_mm.utils.demo_data import make_demo_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import ablate  # noqa: E402

SEG_DEMO = os.path.join(ROOT, 'configs', 'demo', 'fpn_mlla-test_demo.py')
DET_DEMO = os.path.join(ROOT, 'configs', 'demo', 'mask-rcnn_mlla-test_fpn_demo.py')


def test_two_presets_give_one_table_and_plot(tmp_path):
    data_root = str(tmp_path / 'data')
    make_demo_data(data_root, train=4, val=2, size=64, min_radius=8, max_radius=20, log=lambda *_: None)
    recipe = tmp_path / 'tiny_seg.py'
    ade = f'{data_root}/ade'
    recipe.write_text(f"""_base_ = '{SEG_DEMO}'
demo_data = '{data_root}'
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(data_root='{ade}'))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(data_root='{ade}'))
test_dataloader = val_dataloader
""")
    out = tmp_path / 'ablate'
    rows = ablate.main(['--presets', 'baseline,shortcut', '--recipe', str(recipe), '--iters', '2', '--out', str(out),
                        '--bench-iters', '1', '--bench-batch', '1'])
    assert [row['preset'] for row in rows] == ['baseline', 'shortcut']
    saved = json.loads((out / 'ablation.json').read_text())
    assert saved['header']['schedule'] == '2 iterations' and len(saved['rows']) == 2
    for row in saved['rows']:
        assert row['metric'] == 'mIoU' and math.isfinite(row['value']) and 'aAcc' in row['metrics']
        assert row['iters'] == 2 and row['input_shape'] == [128, 128]
        assert row['backbone_params'] > 0 and row['backbone_flops'] > 0 and row['img_per_s'] > 0
        assert (out / row['preset'] / 'iter_2.pth').is_file()
    # the shortcut adds one D per channel of every attention layer (32 + 64 + 128 + 256 channels, one block each)
    assert saved['rows'][1]['backbone_params'] - saved['rows'][0]['backbone_params'] == 480
    assert saved['rows'][1]['switches'] == {'shortcut': True} and saved['rows'][0]['switches'] == {}
    with open(out / 'ablation.csv') as f:
        table = list(csv.DictReader(line for line in f if not line.startswith('#')))
    assert [r['preset'] for r in table] == ['baseline', 'shortcut']
    markdown = (out / 'ablation.md').read_text()
    assert '| shortcut | shortcut=True |' in markdown and 'command: python tools/ablate.py' in markdown
    assert (out / 'ablation.png').stat().st_size > 0


def test_iteration_schedule_is_scaled():
    cfg = Config.fromfile(SEG_DEMO)
    ablate.shorten_schedule(cfg, 200)
    assert cfg.train_cfg == dict(type='IterBasedTrainLoop', max_iters=200, val_interval=200)
    warmup, poly = cfg.param_scheduler
    assert (warmup['begin'], warmup['end'], poly['begin'], poly['end']) == (0, 12, 12, 200)  # 50 and 800 of 800
    assert cfg.default_hooks.checkpoint.interval == 200 and cfg.default_hooks.logger.interval == 20


def test_epoch_schedule_becomes_iterations():
    cfg = Config.fromfile(DET_DEMO)
    ablate.shorten_schedule(cfg, 10)
    assert cfg.train_cfg.max_iters == 10 and cfg.log_processor.by_epoch is False
    warmup, steps = cfg.param_scheduler
    assert warmup['end'] == 10 and warmup['by_epoch'] is False  # a 20-iteration warm-up, capped at the run
    assert steps['milestones'] == [8] and steps['end'] == 10 and steps['by_epoch'] is False  # epoch 3 of 4


def test_bad_arguments_name_the_known_presets(capsys):
    with pytest.raises(SystemExit):
        ablate.parse_args(['--presets', 'baseline,gated', '--recipe', SEG_DEMO])
    assert "unknown presets ['gated']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablate.parse_args(['--presets', 'baseline', '--recipe', SEG_DEMO, '--iters', '0'])
    assert ablate.parse_args(['--presets', 'all', '--recipe', SEG_DEMO]).presets[-1] == 'forget_gate_4dir'
