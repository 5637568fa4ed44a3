"""tools/kernel_report.py: the scan kernels compile for sm_90 without a GPU, with no spills in the 16-bit
configurations VMamba uses, one variant per (dtype, flags) whatever the input size and batch, and a forward grid that
fills an H100 at batch 1 from 1024 x 1024 up.

Subprocesses, because TRITON_INTERPRET=1 (set for this test session) turns @triton.jit into the interpreter."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'kernel_report.py')
ENV = {**os.environ, 'TRITON_INTERPRET': '0'}


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], env=ENV, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope='module')
def scan_report(tmp_path_factory):
    out = tmp_path_factory.mktemp('report') / 'report.json'
    # Two sizes and two batches: the variant count must not grow with them.
    result = run_tool('--ops', 'selective_scan,cross_scan', '--models', 'vmamba_t', '--sizes', '224,1024',
                      '--batches', '1,2', '--dtypes', 'bf16,fp16', '--json', str(out), '--fail-on-spills')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


def test_no_spills_in_16_bit_configurations(scan_report):
    report, _ = scan_report
    assert report['configurations'] == 2 * 2 * 2 * 2 * 4  # ops x sizes x batches x dtypes x stages
    for record in report['variants']:
        assert record['spill_stores'] == record['spill_loads'] == 0, record
        assert 0 < record['registers'] <= 255


def test_one_variant_per_dtype_and_flags(scan_report):
    report, text = scan_report
    counts = {}
    for record in report['variants']:
        counts[record['kernel']] = counts.get(record['kernel'], 0) + 1
    # fwd: summary + output; bwd: summary + gradients; per 16-bit dtype (2). The state pass is float32 only
    # (forward, reverse). Cross-scan as SS2D calls it: scan of the 16-bit map and its backward (merge) in bf16
    # and fp16; merge of the float32 scan output and its backward (scan) in float32.
    assert counts == {'_scan_fwd_chunk_kernel': 4, '_scan_bwd_chunk_kernel': 4, '_state_passing_kernel': 2,
                      '_cross_scan_kernel': 6}, counts
    assert 'variants with spills: 0' in text


def test_forward_grid_fills_an_h100_at_batch_1(scan_report):
    """The launches the op really makes at VMamba-T stage 1, 1024 x 1024, batch 1: >= 264 programs (2 per SM of
    an H100) for every chunk kernel, forward and backward."""
    report, _ = scan_report
    label = 'selective_scan:vmamba_t@1024/b1/bf16/s1'
    chunk_grids = {r['kernel'] + str(r['constexprs']): r['programs'][label] for r in report['variants']
                   if 'chunk' in r['kernel'] and label in r['programs']}
    assert len(chunk_grids) == 4, chunk_grids  # forward summary + output, backward summary + gradients
    assert min(chunk_grids.values()) >= 264, chunk_grids


def load_tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location('kernel_report', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_documents_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool().parse_args(['--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert 'python tools/kernel_report.py' in text and '--fail-on-spills' in text


def test_unknown_names_are_listed(capsys):
    tool = load_tool()
    for flag, value, known in (('--ops', 'nope', 'selective_scan'), ('--models', 'vmamba_x', 'vmamba_t'),
                               ('--dtypes', 'fp8', 'bf16')):
        with pytest.raises(SystemExit):
            tool.parse_args([flag, value])
        error = capsys.readouterr().err
        assert f"['{value}']" in error and known in error, error


def test_refuses_to_run_under_the_interpreter():
    with pytest.raises(RuntimeError, match='TRITON_INTERPRET=0'):
        load_tool().report(['cross_scan'], ['vmamba_t'], ['224'], [1], ['bf16'])
