"""tools/benchmark.py on the CPU at small sizes: outputs, re-plotting, OOM handling and bad input."""
import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from mlla_mm import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG_CONFIG = os.path.join(ROOT, 'configs/mmseg/upernet_mlla-t_8xb2-160k_ade20k-512x512.py')
DET_CONFIG = os.path.join(ROOT, 'configs/mmdet/mask-rcnn_mlla-t_fpn_1x_coco.py')
FAST = ['--device', 'cpu', '--warmup', '1', '--iters', '1']


def load_cli():
    spec = importlib.util.spec_from_file_location('benchmark_cli', os.path.join(ROOT, 'tools', 'benchmark.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli = load_cli()


def read_csv(path):
    with open(path) as f:
        lines = f.read().splitlines()
    header = [line for line in lines if line.startswith('# ')]
    return header, list(csv.DictReader(line for line in lines if not line.startswith('# ')))


def assert_png(path):
    import matplotlib.image
    assert os.path.getsize(path) > 10_000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and len(torch.from_numpy(image).reshape(-1, image.shape[-1]).unique(dim=0)) > 10


@pytest.fixture(scope='module')
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench')
    code = cli.main(['--models', 'mlla_test,vmamba_test@torch,timm:convnext_atto', '--sizes', '64,128',
                           '--out', str(out), *FAST])
    return code, out


def test_cpu_run_writes_json_csv_and_plots_with_both_models(cpu_run):
    code, out = cpu_run
    assert code == 0
    with open(out / 'benchmark.json') as f:
        saved = json.load(f)
    header, rows = saved['header'], saved['results']
    assert header['device_type'] == 'cpu' and header['versions']['torch'] == torch.__version__
    assert 'commit' in header and header['args']['sizes'] == [[64, 64], [128, 128]]
    assert header['kernel_backends_used']['linear_attention'] == ['torch']
    assert header['kernel_backends_used']['selective_scan'] == ['torch']
    assert [(r['model'], r['size']) for r in rows] == [
        ('mlla_test@auto', '64x64'), ('mlla_test@auto', '128x128'), ('vmamba_test@torch', '64x64'),
        ('vmamba_test@torch', '128x128'), ('timm:convnext_atto', '64x64'), ('timm:convnext_atto', '128x128')]
    for row in rows:
        assert set(row) == set(benchmark.FIELDS) and row['status'] == 'ok' and row['batch'] == 1 and not row['error']
        assert row['img_per_s'] > 0 and row['ms_per_img'] == pytest.approx(1e3 / row['img_per_s'], rel=0.01)
        assert row['mem_mib'] is not None and row['mem_warmup_mib'] is not None
        assert row['params_m'] > 0
    # FLOPs grow with the pixels (4x from 64 to 128, up to the stem padding and pooling terms).
    for model in ('mlla_test@auto', 'timm:convnext_atto'):
        small, large = (r['gflops'] for r in rows if r['model'] == model)
        assert 3.5 < large / small < 4.5

    csv_header, csv_rows = read_csv(out / 'benchmark.csv')
    assert any(line.startswith('# commit: ') for line in csv_header)
    assert any(line.startswith('# device: ') for line in csv_header)
    assert [r['model'] for r in csv_rows] == [r['model'] for r in rows]
    assert [float(r['img_per_s']) for r in csv_rows] == [r['img_per_s'] for r in rows]
    for name in ('throughput.png', 'memory.png'):
        assert_png(out / name)


def test_plots_draw_one_line_per_model_and_replot_from_json(cpu_run, tmp_path):
    _, out = cpu_run
    drawn = benchmark.replot(str(out / 'benchmark.json'), str(tmp_path))
    labels = ['mlla_test@auto', 'vmamba_test@torch', 'timm:convnext_atto']
    assert drawn == {name: labels for name in ('throughput.png', 'memory.png')}
    for name in drawn:
        assert_png(tmp_path / name)
    assert cli.main(['--replot', str(out / 'benchmark.json'), '--out', str(tmp_path / 'again')]) == 0
    assert sorted(os.listdir(tmp_path / 'again')) == ['memory.png', 'throughput.png']


def test_config_train_step_and_inference(tmp_path):
    """A segmentor training step and a detector inference, both with the test arch at 64 px."""
    seg_options = ['--cfg-options', 'model.backbone.arch=test', 'model.decode_head.in_channels=[32,64,128,256]',
                   'model.auxiliary_head.in_channels=128']
    # Batch 2: UperNet's pyramid pooling has BatchNorms over 1x1 maps, which cannot train on one image.
    code = cli.main(['--models', f'{SEG_CONFIG}@torch', '--sizes', '64', '--mode', 'train', '--batch', '2',
                           '--out', str(tmp_path / 'seg'), *FAST, *seg_options])
    assert code == 0
    with open(tmp_path / 'seg' / 'benchmark.json') as f:
        (row,) = json.load(f)['results']
    assert row['model'] == 'upernet_mlla-t_8xb2-160k_ade20k-512x512@torch' and row['kind'] == 'config'
    assert row['status'] == 'ok' and row['mode'] == 'train' and row['img_per_s'] > 0 and row['gflops'] > 0

    det_options = ['--cfg-options', 'model.backbone.arch=test', 'model.neck.in_channels=[32,64,128,256]']
    code = cli.main(['--models', DET_CONFIG, '--sizes', '64', '--no-flops', '--out', str(tmp_path / 'det'),
                           *FAST, *det_options])
    assert code == 0
    with open(tmp_path / 'det' / 'benchmark.json') as f:
        (row,) = json.load(f)['results']
    assert row['model'] == 'mask-rcnn_mlla-t_fpn_1x_coco@auto' and row['status'] == 'ok'
    assert row['gflops'] is None and row['params_m'] > 0


@pytest.mark.parametrize('error', [
    torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 80.00 GiB'),
    MemoryError(),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes"),
])
def test_out_of_memory_errors_are_recognised(error):
    assert benchmark.is_out_of_memory(error)
    assert not benchmark.is_out_of_memory(RuntimeError('shapes cannot be multiplied'))


def test_out_of_memory_is_recorded_and_the_run_goes_on(monkeypatch, tmp_path):
    real_make_step = benchmark.make_step

    def make_step(model, library, data, args):
        if data.shape[-1] == 128:
            def step():
                raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 80.00 GiB')
            return step
        return real_make_step(model, library, data, args)

    monkeypatch.setattr(benchmark, 'make_step', make_step)
    code = cli.main(['--models', 'mlla_test@torch', '--sizes', '128,64', '--no-flops', '--out', str(tmp_path),
                           *FAST])
    assert code == 0
    with open(tmp_path / 'benchmark.json') as f:
        rows = json.load(f)['results']
    assert [(r['size'], r['status']) for r in rows] == [('128x128', 'OOM'), ('64x64', 'ok')]
    assert rows[0]['img_per_s'] is None and rows[0]['mem_mib'] is None
    assert rows[0]['error'].startswith('OutOfMemoryError: CUDA out of memory')
    assert rows[1]['img_per_s'] > 0
    _, csv_rows = read_csv(tmp_path / 'benchmark.csv')
    assert [r['status'] for r in csv_rows] == ['OOM', 'ok']


def test_other_failures_are_recorded_as_errors_with_exit_status_1(monkeypatch, tmp_path):
    def make_step(model, library, data, args):
        def step():
            raise ValueError('broken step')
        return step

    monkeypatch.setattr(benchmark, 'make_step', make_step)
    code = cli.main(['--models', 'mlla_test@torch', '--sizes', '64', '--no-flops', '--out', str(tmp_path),
                           *FAST])
    assert code == 1
    with open(tmp_path / 'benchmark.json') as f:
        (row,) = json.load(f)['results']
    assert row['status'] == 'error' and row['error'] == 'ValueError: broken step'


def test_unknown_model_lists_the_known_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(['--models', 'mlla_t,no_such_net', '--device', 'cpu'])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "unknown model 'no_such_net'" in message
    for known in ('mlla_t', 'mlla_test', 'swin_t', 'convnext_t', 'mambaout_t', 'timm:NAME', 'config'):
        assert known in message


@pytest.mark.parametrize('argv, expected', [
    (['--models', 'mlla_test', '--sizes', '224,abc'], "bad size 'abc'"),
    (['--models', 'mlla_test', '--sizes', '0x224'], "bad size '0x224'"),
    (['--models', 'mlla_test', '--sizes', '224x'], "bad size '224x'"),
    (['--models', 'mlla_test', '--backends', 'cuda'], "unknown backend(s) ['cuda']"),
    (['--models', 'mlla_test', '--iters', '0'], 'must be positive'),
    (['--models', 'convnext_t@torch'], 'convnext_t has no mlla_mm kernels'),
    (['--models', 'mlla_t@fast'], "unknown backend 'fast'"),
    (['--models', 'timm:not_a_timm_model'], "timm has no model 'not_a_timm_model'"),
    (['--models', 'configs/missing.py'], 'config file not found: configs/missing.py'),
    (['--models', 'mlla_test', '--batch', '2', '--pixels-per-batch', '100'], 'not allowed with argument'),
    (['--sizes', '64'], '--models is required'),
])
def test_bad_arguments_give_clear_errors(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(['--device', 'cpu', *argv])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_parse_size():
    assert [cli.parse_size(s) for s in ('224', '800x1333', '1024X512')] == [(224, 224), (800, 1333), (1024, 512)]


def test_pixels_per_batch_sets_the_batch_per_size(tmp_path):
    assert cli.main(['--models', 'mlla_test@torch', '--sizes', '8,16,64', '--pixels-per-batch', str(16 * 16 * 4),
                           '--no-flops', '--out', str(tmp_path), '--device', 'cpu', '--warmup', '0',
                           '--iters', '1']) == 0
    with open(tmp_path / 'benchmark.json') as f:
        rows = json.load(f)['results']
    assert [(r['size'], r['batch']) for r in rows] == [('8x8', 16), ('16x16', 4), ('64x64', 1)]
    assert all(r['mem_warmup_mib'] is None for r in rows)


def test_help_documents_the_options():
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'benchmark.py'), '--help'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for option in ('--models', '--backends', '--sizes', '--batch', '--pixels-per-batch', '--dtype', '--channels-last',
                   '--mode', '--warmup', '--iters', '--device', '--out', '--replot', '--cfg-options', 'OOM',
                   'swin_t', 'convnext_t', 'mambaout_t', 'timm:NAME', 'FlopAnalyzer', 'cuDNN', 'mlla_t', 'vmamba_t'):
        assert option in result.stdout


def test_environment_header_names_device_versions_and_commit():
    report = benchmark.environment(torch.device('cpu'))
    assert report['device_type'] == 'cpu' and 'cores' in report['device']
    assert report['versions']['torch'] == torch.__version__ and report['versions']['mmdet'] is not None
    assert report['versions']['mlla_mm'] is not None and report['env']['MMEngine']
    assert report['commit'] is None or len(report['commit']) == 40


def test_timer_measures_a_known_sleep():
    """The one timer (also tools/benchmark_kernels.py's): mean milliseconds per call."""
    import time
    calls = []
    ms = benchmark.time_ms(lambda: (calls.append(1), time.sleep(0.01)), iters=4, warmup=2)
    assert len(calls) >= 2 + 4 and 9.5 < ms < 200, (len(calls), ms)


def test_flop_analyzer_counts_a_conv_exactly():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert benchmark.flop_analyzer(conv, (10, 12)).total() == 3 * 8 * 9 * 10 * 12  # multiply-adds


def test_synthetic_batch_fixture(mm_batch):
    det = mm_batch('mmdet', batch=2, size=(48, 64), num_classes=4)
    assert [tuple(image.shape) for image in det['inputs']] == [(3, 48, 64)] * 2
    assert all(s.gt_instances.labels.max() < 4 and len(s.gt_instances.masks) for s in det['data_samples'])
    seg = mm_batch('mmseg', batch=1, size=40, num_classes=5)
    assert seg['inputs'][0].dtype == torch.uint8 and seg['data_samples'][0].gt_sem_seg.data.shape == (1, 40, 40)
    assert int(seg['data_samples'][0].gt_sem_seg.data.max()) < 5
