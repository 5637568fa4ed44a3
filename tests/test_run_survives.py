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


@pytest.fixture(scope='module')
def one_go(tmp_path_factory, data_root):
    """The segmentation demo trained for 4 iterations in one go: (config, work dir)."""
    tmp_path = tmp_path_factory.mktemp('one_go')
    config = tiny_config(tmp_path, SEG_DEMO, data_root, iters=4)
    train(config, tmp_path / 'work', 'train_cfg.max_iters=4')
    return config, tmp_path / 'work'


def test_resume_repeats_an_uninterrupted_run_exactly(tmp_path, one_go):
    """4 iterations in one go == 2 iterations, then --resume to 4: same loss at every iteration, same weights."""
    config, one_go_dir = one_go
    train(config, tmp_path / 'split', 'train_cfg.max_iters=2')
    output = train(config, tmp_path / 'split', 'train_cfg.max_iters=4', extra=['--resume'])
    assert 'resumed epoch: 0, iter: 2' in output
    whole, split = logged(one_go_dir), logged(tmp_path / 'split')
    assert sorted(whole) == sorted(split) == [1, 2, 3, 4]
    for step in whole:
        assert whole[step]['loss'] == split[step]['loss'], (step, whole[step], split[step])
    assert_same_weights(weights(one_go_dir / 'iter_4.pth'), weights(tmp_path / 'split' / 'iter_4.pth'))


def test_sigterm_keeps_the_last_checkpoint_and_resume_finishes_the_run(tmp_path, one_go):
    """SIGTERM as soon as the first checkpoint exists: the run stops after its iteration with status 143, the last
    checkpoint loads, and --resume to 4 iterations ends with the weights of the uninterrupted run."""
    config, one_go_dir = one_go
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
    assert 1 <= stopped_at < 4, f'stopped at iteration {stopped_at}: the signal came too late to test resuming'
    output = train(config, work_dir, 'train_cfg.max_iters=4', extra=['--resume'])
    assert f'resumed epoch: 0, iter: {stopped_at}' in output
    assert_same_weights(weights(work_dir / 'iter_4.pth'), weights(one_go_dir / 'iter_4.pth'))


@pytest.mark.parametrize('demo', [DET_DEMO, pytest.param(SEG_DEMO, marks=pytest.mark.slow)],
                         ids=['detection', 'segmentation'])
def test_amp_on_cpu_trains_in_bf16_with_finite_losses_gradients_and_draws_curves(tmp_path, data_root, demo):
    import matplotlib.image
    config = tiny_config(tmp_path, demo, data_root, iters=4)
    output = train(config, tmp_path / 'work', extra=['--amp'])
    assert '--amp on a CPU: bf16 autocast' in output
    records = logged(tmp_path / 'work')
    assert len(records) == 4
    for record in records.values():
        values = {k: v for k, v in record.items() if k.startswith('loss') or k == 'grad_norm'}
        assert 'grad_norm' in values and all(abs(v) < float('inf') for v in values.values()), record
    # The tiny configs validate halfway and at the end: two points on the metric curve.
    for name in ('loss_curve.png', 'metric_curve.png'):
        image = matplotlib.image.imread(tmp_path / 'work' / name)
        assert image.shape[0] > 200 and len(set(map(tuple, image.reshape(-1, 4)[::7].tolist()))) > 10, name
