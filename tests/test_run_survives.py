"""A run that survives: exact resume, SIGTERM then --resume, bf16 autocast on the CPU, loss and metric plots.

Each test trains the tiny demo configs of tests/test_tools.py for a few iterations in subprocesses (tools/train.py)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.test_tools import DET_DEMO, ROOT, SEG_DEMO, data_root, run, tiny_config  # noqa: F401  (data_root: fixture)

# Log every iteration, unsmoothed, with the gradient norm (a clip_grad that never clips makes mmengine log it; the
# segmentation recipe sets clip_grad=None, which a dict replaces only with _delete_).
EXACT = ['log_processor.window_size=1', 'default_hooks.logger.interval=1', 'optim_wrapper.clip_grad.max_norm=1e9']
SEG_EXACT = [*EXACT, 'optim_wrapper.clip_grad._delete_=True']


def logged(work_dir):
    """{step: record} of the training scalars of every run in a work dir (LocalVisBackend's scalars.json)."""
    records = {}
    for folder in sorted(os.listdir(work_dir)):
        path = os.path.join(work_dir, folder, 'vis_data', 'scalars.json')
        if os.path.isfile(path):
            with open(path) as f:
                records.update((r['step'], r) for r in map(json.loads, f) if 'loss' in r)
    return records


def weights(path):
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f'{len(different)} tensors differ, e.g. {different[:3]}'


def train(config, work_dir, *options, extra=()):
    logging = SEG_EXACT if 'fpn_mlla-test_demo' in config else EXACT
    return run('tools/train.py', config, '--work-dir', str(work_dir), *extra, '--cfg-options', *logging, *options)


def test_resume_repeats_an_uninterrupted_run_exactly(tmp_path, data_root):
    """4 iterations in one go == 2 iterations, then --resume to 4: same loss at every iteration, same weights."""
    config = tiny_config(tmp_path, SEG_DEMO, data_root, iters=4)
    train(config, tmp_path / 'one_go', 'train_cfg.max_iters=4')
    train(config, tmp_path / 'split', 'train_cfg.max_iters=2')
    output = train(config, tmp_path / 'split', 'train_cfg.max_iters=4', extra=['--resume'])
    assert 'resumed epoch: 0, iter: 2' in output
    one_go, split = logged(tmp_path / 'one_go'), logged(tmp_path / 'split')
    assert sorted(one_go) == sorted(split) == [1, 2, 3, 4]
    for step in one_go:
        assert one_go[step]['loss'] == split[step]['loss'], (step, one_go[step], split[step])
    assert_same_weights(weights(tmp_path / 'one_go' / 'iter_4.pth'), weights(tmp_path / 'split' / 'iter_4.pth'))


def test_sigterm_keeps_the_last_checkpoint_and_resume_finishes_the_run(tmp_path, data_root):
    config = tiny_config(tmp_path, SEG_DEMO, data_root, iters=4)
    work_dir = tmp_path / 'work'
    process = subprocess.Popen(
        [sys.executable, 'tools/train.py', config, '--work-dir', str(work_dir), '--cfg-options', *SEG_EXACT,
         'train_cfg.max_iters=1000'], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, 'OMP_NUM_THREADS': '1'})
    deadline = time.monotonic() + 300
    while not (work_dir / 'last_checkpoint').is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert 'SIGTERM received: stopping after iteration' in output
    last = (work_dir / 'last_checkpoint').read_text().strip()
    stopped_at = torch.load(last, map_location='cpu', weights_only=False)['meta']['iter']
    assert 1 <= stopped_at < 1000
    # --resume picks up the last checkpoint; the result equals a run that was never interrupted.
    output = train(config, work_dir, f'train_cfg.max_iters={stopped_at + 2}', extra=['--resume'])
    assert f'resumed epoch: 0, iter: {stopped_at}' in output
    train(config, tmp_path / 'one_go', f'train_cfg.max_iters={stopped_at + 2}')
    name = f'iter_{stopped_at + 2}.pth'
    assert_same_weights(weights(work_dir / name), weights(tmp_path / 'one_go' / name))


@pytest.mark.parametrize('demo, iters', [(DET_DEMO, 4), (SEG_DEMO, 4)], ids=['detection', 'segmentation'])
def test_amp_on_cpu_trains_in_bf16_with_finite_losses_and_gradients(tmp_path, data_root, demo, iters):
    config = tiny_config(tmp_path, demo, data_root, iters=iters)
    output = train(config, tmp_path / 'work', extra=['--amp'])
    assert '--amp on a CPU: bf16 autocast' in output
    records = logged(tmp_path / 'work')
    assert len(records) == iters
    for record in records.values():
        values = {k: v for k, v in record.items() if k.startswith('loss') or k == 'grad_norm'}
        assert 'grad_norm' in values and all(map(lambda v: abs(v) < float('inf'), values.values())), record


def test_loss_and_metric_curves_are_drawn(tmp_path, data_root):
    import matplotlib.image
    config = tiny_config(tmp_path, SEG_DEMO, data_root, iters=4)
    train(config, tmp_path / 'work', 'train_cfg.val_interval=2')
    for name in ('loss_curve.png', 'metric_curve.png'):
        image = matplotlib.image.imread(tmp_path / 'work' / name)
        assert image.ndim == 3 and image.shape[0] > 200 and len(set(map(tuple, image.reshape(-1, 4)[::7].tolist()))) > 10
