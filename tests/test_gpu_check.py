"""tools/gpu_check.py on a machine without a GPU: it imports cleanly, parses its arguments, refuses clearly, and the
pieces it runs on the GPU work here on CPU tensors (kernel checks through the interpreter, the report)."""
import importlib.util
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def gpu_check():
    spec = importlib.util.spec_from_file_location('gpu_check', os.path.join(ROOT, 'tools', 'gpu_check.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_documents_the_one_command(gpu_check, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args(['--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert 'python tools/gpu_check.py --out work_dirs/gpu_check' in text
    for step in gpu_check.STEPS:
        assert step in text


def test_arguments(gpu_check, capsys):
    args = gpu_check.parse_args([])
    assert args.steps == list(gpu_check.STEPS) and args.budget_s == 480 and args.sizes == [224, 512, 1024, 2048]
    with pytest.raises(SystemExit):
        gpu_check.parse_args(['--steps', 'kernels,nope'])
    assert "unknown steps ['nope']" in capsys.readouterr().err


def test_refuses_without_cuda(gpu_check, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert gpu_check.main(['--out', str(tmp_path / 'out')]) == 2
    assert 'gpu_check needs a CUDA GPU' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_refuses_under_the_interpreter(gpu_check, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    assert 'unset TRITON_INTERPRET' in gpu_check.cuda_refusal()


def test_kernel_checks_run_on_cpu_through_the_interpreter(gpu_check):
    """The same check functions at tiny shapes: every row passes, and a broken case is recorded, not raised."""
    cases = ((gpu_check.check_selective_scan, 'tiny scan', (1, 4, 2, 1, 20)),
             (gpu_check.check_cross_scan, 'tiny cross-scan', (1, 2, 3, 5)),
             (gpu_check.check_linear_attention, 'tiny linear attention', (1, 3, 5, 2, 16)))
    rows = gpu_check.run_kernel_checks('cpu', cases, dtypes=(torch.float32, torch.bfloat16))
    assert {r['op'] for r in rows} == {'selective_scan', 'cross_scan', 'cross_merge', 'linear_attention'}
    scan_rows = [r for r in rows if r['op'] == 'selective_scan' and r['dtype'] == 'float32']
    assert len(scan_rows) == 1 + 7 + 1  # y, 7 gradients, bit-identical gradients
    failed = [r for r in rows if not r['passed']]
    assert not failed, failed
    broken = gpu_check.run_kernel_checks('cpu', ((gpu_check.check_cross_scan, 'bad', (1, 2, 3)),),
                                         dtypes=(torch.float32,))
    assert len(broken) == 1 and not broken[0]['passed'] and 'TypeError' in broken[0]['tensor']


def test_comparison_fails_outside_the_tolerance(gpu_check):
    rows = []
    expected = torch.ones(4)
    gpu_check.compare(rows, 'op', 'case', torch.float32, 'ok', expected + 1e-5, expected)
    gpu_check.compare(rows, 'op', 'case', torch.float32, 'off', expected + 1e-2, expected)
    gpu_check.compare(rows, 'op', 'case', torch.float32, 'nan', expected * float('nan'), expected)
    assert [r['passed'] for r in rows] == [True, False, False]


def test_subprocess_commands_use_flags_the_tools_accept(gpu_check):
    """benchmark_kernels.py and benchmark.py belong to others: the flags gpu_check passes must parse there."""
    spec = importlib.util.spec_from_file_location('benchmark_kernels',
                                                  os.path.join(ROOT, 'tools', 'benchmark_kernels.py'))
    benchmark_kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark_kernels)
    args = benchmark_kernels.parse_args(gpu_check.benchmark_kernels_command('out.json')[2:])
    assert args.recompile_sizes == 50 and args.out == 'out.json'

    spec = importlib.util.spec_from_file_location('benchmark', os.path.join(ROOT, 'tools', 'benchmark.py'))
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    for command in gpu_check.benchmark_commands('out', [224, 2048], with_compile=False).values():
        args = benchmark.build_parser().parse_args(command[2:])
        assert args.dtype == 'bf16' and args.sizes == [(224, 224), (2048, 2048)]
    assert gpu_check.pytest_command()[-4:-2] == ['-m', 'cuda']


def test_markdown_report(gpu_check):
    result = dict(environment=dict(device='NVIDIA H200', torch='2.14', commit='abc1234'),
                  kernels=[dict(op='selective_scan', case='c', dtype='bfloat16', tensor='y', max_abs_err=1e-3,
                                worst_ratio=0.1, finite=True, passed=True)],
                  pytest=dict(command=['pytest'], returncode=0, seconds=1.0, output_tail='3 passed'),
                  amp=[dict(model='mlla_t', dtype='float16', losses=[2.3, 2.2], passed=True)],
                  compile=[dict(model='vmamba_t', graphs=1, worst_ratio=0.5, first_calls_s=30.0, timing_size=1024,
                                eager_ms=20.0, compiled_ms=12.0, passed=True)],
                  errors=dict(benchmark='RuntimeError: boom'))
    text = gpu_check.markdown(result)
    assert 'NVIDIA H200' in text and 'abc1234' in text and '1/1 pass' in text and '3 passed' in text
    assert '| vmamba_t | 1 |' in text and 'RuntimeError: boom' in text
