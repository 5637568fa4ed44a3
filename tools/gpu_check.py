#!/usr/bin/env python
"""One command for a GPU session: kernel correctness, kernel and model benchmarks, AMP and torch.compile checks.

  python tools/gpu_check.py --out work_dirs/gpu_check

That is the whole check (about 8 minutes on one H100 or H200; --budget-s caps it, each step gets what is left). It
refuses to run without CUDA. Steps, in order (a failing step is recorded and the next one still runs):
  1. kernels: every Triton op on CUDA at real model shapes (VMamba-T/B selective scan and cross-scan, MLLA-T linear
     attention; bf16, fp16, fp32), output and every gradient against the float32 PyTorch reference on the same
     (rounded) inputs, with the tolerance table of tests/tolerances.py; selective-scan gradients bit-identical over
     two runs;
  2. pytest -m cuda with TRITON_INTERPRET=0 (the compiled kernels);
  3. tools/benchmark_kernels.py --recompile-sizes 50 (roofline fractions; compiled variants over 50 input sizes);
  4. tools/benchmark.py: MLLA-T and VMamba-T on each backend against Swin-T and ConvNeXt-T, inference and a training
     step, 224^2 to 2048^2, bf16 (and compiled, when benchmark.py offers --compile);
  5. AMP training steps (fp16 with a GradScaler, and bf16) of MLLA-T and VMamba-T: losses and gradients finite;
  6. torch.compile(dynamic=True) of MLLA-T and VMamba-T on CUDA: compiled equals eager over two sizes, one graph,
     eager vs compiled time.
It writes, under --out: gpu_check.json (everything, with device, versions and commit), gpu_check.md (the tables)
and the PNGs of benchmark.py (benchmark_infer/, benchmark_train/).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

STEPS = ('kernels', 'pytest', 'benchmark_kernels', 'benchmark', 'amp', 'compile')
MODEL_SIZES = (224, 512, 1024, 2048)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='work_dirs/gpu_check', help='output folder (default: %(default)s)')
    parser.add_argument('--steps', default=','.join(STEPS), help='comma list of steps to run (default: all: '
                        '%(default)s)')
    parser.add_argument('--budget-s', type=float, default=480, help='total time budget in seconds (default: 480)')
    parser.add_argument('--sizes', default=','.join(map(str, MODEL_SIZES)),
                        help='square input sizes of the model table (default: %(default)s)')
    args = parser.parse_args(argv)
    args.steps = args.steps.split(',')
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        parser.error(f'unknown steps {unknown}; known: {list(STEPS)}')
    args.sizes = [int(s) for s in args.sizes.split(',')]
    return args


def cuda_refusal():
    """None when a CUDA GPU is usable, else the reason (the command refuses to run)."""
    if not torch.cuda.is_available():
        return (f'gpu_check needs a CUDA GPU, and torch.cuda.is_available() is False here (torch {torch.__version__}, '
                f'CUDA build {torch.version.cuda}). Run it on the GPU machine; on a CPU use '
                f'tools/kernel_report.py (static sm_90 report) and the interpreter tests instead.')
    if os.environ.get('TRITON_INTERPRET') == '1':
        return 'gpu_check runs the compiled kernels: unset TRITON_INTERPRET (it is 1 here)'
    return None


# --------------------------------------------------------------------------------------------------- 1. kernels
def compare(rows, op, case, dtype, name, actual, expected):
    """Record max |error| against the tolerance of ``dtype`` (tests/tolerances.py: |a - e| <= atol + rtol |e|)."""
    from tests.tolerances import TOLERANCES
    tol = TOLERANCES[dtype]
    actual, expected = actual.float(), expected.float()
    error = (actual - expected).abs()
    allowed = tol['atol'] + tol['rtol'] * expected.abs()
    rows.append(dict(op=op, case=case, dtype=str(dtype).replace('torch.', ''), tensor=name,
                     max_abs_err=error.max().item(), worst_ratio=(error / allowed).max().item(),
                     finite=bool(torch.isfinite(actual).all()),
                     passed=bool((error <= allowed).all() and torch.isfinite(actual).all())))


def _grads(out, inputs, grad_out):
    return torch.autograd.grad(out, [t for t in inputs if t is not None], grad_out.to(out.dtype))


def check_selective_scan(rows, device, case, batch, dim, groups, n_state, length, dtype):
    from mlla_mm.kernels.selective_scan import selective_scan, selective_scan_reference
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(batch, dim, length, generator=gen)
    delta = 0.5 * torch.randn(batch, dim, length, generator=gen) - 3.0
    A = -torch.exp(0.4 * torch.randn(dim, n_state, generator=gen))
    B, C = (torch.randn(batch, groups, n_state, length, generator=gen) for _ in range(2))
    D, bias = torch.randn(dim, generator=gen), 0.5 * torch.randn(dim, generator=gen)
    low = [t.to(device, dtype).requires_grad_() for t in (u, delta)] + [A.to(device).requires_grad_()] + \
        [t.to(device, dtype).requires_grad_() for t in (B, C)] + [t.to(device).requires_grad_() for t in (D, bias)]
    ref = [t.detach().float().requires_grad_() for t in low]
    grad_out = torch.randn(batch, dim, length, generator=gen).to(device)
    out = selective_scan(*low, delta_softplus=True, output_fp32=True, backend='triton')
    expected = selective_scan_reference(*ref, delta_softplus=True, output_fp32=True)
    compare(rows, 'selective_scan', case, dtype, 'y', out, expected)
    grads, expected_grads = _grads(out, low, grad_out), _grads(expected, ref, grad_out)
    names = ('du', 'ddelta', 'dA', 'dB', 'dC', 'dD', 'ddelta_bias')
    for name, got, want in zip(names, grads, expected_grads):
        compare(rows, 'selective_scan', case, dtype, name, got, want)
    again = _grads(selective_scan(*low, delta_softplus=True, output_fp32=True, backend='triton'), low, grad_out)
    rows.append(dict(op='selective_scan', case=case, dtype=str(dtype).replace('torch.', ''),
                     tensor='gradients bit-identical over 2 runs', max_abs_err=0.0, worst_ratio=0.0, finite=True,
                     passed=all(torch.equal(a, b) for a, b in zip(grads, again))))


def check_cross_scan(rows, device, case, batch, channels, height, width, dtype):
    from mlla_mm.kernels.cross_scan import cross_merge, cross_merge_reference, cross_scan, cross_scan_reference
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, height, width, generator=gen).to(device, dtype).requires_grad_()
    y = torch.randn(batch, 4, channels, height * width, generator=gen).to(device, dtype).requires_grad_()
    x32, y32 = (t.detach().float().requires_grad_() for t in (x, y))
    routes, merged = cross_scan(x, backend='triton'), cross_merge(y, height, width, backend='triton')
    expected_routes, expected_merged = cross_scan_reference(x32), cross_merge_reference(y32, height, width)
    compare(rows, 'cross_scan', case, dtype, 'routes', routes, expected_routes)
    compare(rows, 'cross_merge', case, dtype, 'map', merged, expected_merged)
    grad_routes = torch.randn(routes.shape, generator=gen).to(device)
    grad_map = torch.randn(merged.shape, generator=gen).to(device)
    compare(rows, 'cross_scan', case, dtype, 'dx', _grads(routes, [x], grad_routes)[0],
            _grads(expected_routes, [x32], grad_routes)[0])
    compare(rows, 'cross_merge', case, dtype, 'dy', _grads(merged, [y], grad_map)[0],
            _grads(expected_merged, [y32], grad_map)[0])


def check_linear_attention(rows, device, case, batch, height, width, heads, head_dim, dtype):
    """MLLA's call: packed qk [B, N, 2C], v [B, N, H, D], LePE's depthwise 3x3 (float32 parameters)."""
    from mlla_mm.kernels.linear_attention import linear_attention, linear_attention_reference
    gen = torch.Generator().manual_seed(0)
    tokens, channels = height * width, heads * head_dim
    qk = torch.randn(batch, tokens, 2 * channels, generator=gen).to(device, dtype).requires_grad_()
    v = torch.randn(batch, tokens, heads, head_dim, generator=gen).to(device, dtype).requires_grad_()
    lepe_weight = (0.2 * torch.randn(channels, 1, 3, 3, generator=gen)).to(device).requires_grad_()
    lepe_bias = torch.randn(channels, generator=gen).to(device).requires_grad_()
    low = [qk, v, lepe_weight, lepe_bias]
    ref = [t.detach().float().requires_grad_() for t in low]
    out = linear_attention(qk, v, (height, width), lepe_weight=lepe_weight, lepe_bias=lepe_bias, backend='triton')
    expected = linear_attention_reference(ref[0], ref[1], (height, width), lepe_weight=ref[2], lepe_bias=ref[3])
    compare(rows, 'linear_attention', case, dtype, 'out', out, expected)
    grad_out = torch.randn(out.shape, generator=gen).to(device)
    for name, got, want in zip(('dqk', 'dv', 'dlepe_weight', 'dlepe_bias'), _grads(out, low, grad_out),
                               _grads(expected, ref, grad_out)):
        compare(rows, 'linear_attention', case, dtype, name, got, want)


# (check, case name, sizes): real stage shapes of the released models.
KERNEL_CASES = (
    (check_selective_scan, 'VMamba-T stage 1, 2x224^2', (2, 384, 4, 1, 56 * 56)),
    (check_selective_scan, 'VMamba-T stage 1, 1x1024^2', (1, 384, 4, 1, 256 * 256)),
    (check_selective_scan, 'VMamba-B stage 4, 2x800x1216', (2, 8192, 4, 1, 25 * 38)),
    (check_cross_scan, 'VMamba-T stage 1, 2x800x1216', (2, 96, 200, 304)),
    (check_cross_scan, 'VMamba-B stage 3, 1x511x737', (1, 1024, 32, 47)),
    (check_linear_attention, 'MLLA-T stage 1, 2x224^2', (2, 56, 56, 2, 32)),
    (check_linear_attention, 'MLLA-B stage 3, 2x800x1216', (2, 50, 76, 12, 32)),
)


def run_kernel_checks(device, cases=KERNEL_CASES, dtypes=(torch.bfloat16, torch.float16, torch.float32)):
    """Rows of comparisons; an op whose check raises gets one failed row naming the error."""
    rows = []
    for check, case, sizes in cases:
        for dtype in dtypes:
            try:
                check(rows, device, case, *sizes, dtype)
            except Exception as error:  # recorded, so one broken op does not hide the others
                rows.append(dict(op=check.__name__.replace('check_', ''), case=case,
                                 dtype=str(dtype).replace('torch.', ''), tensor=f'{type(error).__name__}: {error}',
                                 max_abs_err=math.nan, worst_ratio=math.nan, finite=False, passed=False))
    return rows


# ------------------------------------------------------------------------------------------- 2-4. subprocess steps
def run_command(command, timeout, env=None):
    start = time.time()
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=max(1, timeout),
                                env={**os.environ, **(env or {})})
        return dict(command=command, returncode=result.returncode, seconds=round(time.time() - start, 1),
                    output_tail=(result.stdout + result.stderr)[-4000:])
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b'').decode(errors='replace') if isinstance(error.stdout, bytes) else \
            (error.stdout or '')
        return dict(command=command, returncode=None, seconds=round(time.time() - start, 1),
                    output_tail=f'timed out after {timeout:.0f} s\n' + output[-4000:])


def pytest_command():
    return [sys.executable, '-m', 'pytest', '-q', '-m', 'cuda', '-p', 'no:cacheprovider']


def benchmark_kernels_command(out_json):
    return [sys.executable, 'tools/benchmark_kernels.py', '--recompile-sizes', '50', '--out', out_json]


def benchmark_commands(out_dir, sizes, with_compile):
    """tools/benchmark.py runs: inference and a training step, bf16, ours on each backend against Swin-T and
    ConvNeXt-T."""
    common = ['--models', 'mlla_t,vmamba_t,swin_t,convnext_t', '--backends', 'triton,torch',
              '--sizes', ','.join(map(str, sizes)), '--dtype', 'bf16', '--warmup', '3', '--iters', '10', '--no-flops']
    if with_compile:
        common.append('--compile')
    return {mode: [sys.executable, 'tools/benchmark.py', *common, '--mode', mode,
                   '--out', os.path.join(out_dir, f'benchmark_{mode}')] for mode in ('infer', 'train')}


def benchmark_offers_compile():
    help_text = run_command([sys.executable, 'tools/benchmark.py', '--help'], 120)['output_tail']
    return '--compile' in help_text


# ----------------------------------------------------------------------------------------------- 5-6. model checks
def amp_training_steps(names=('mlla_t', 'vmamba_t'), size=512, steps=3):
    import mlla_mm
    rows = []
    for name in names:
        for dtype in (torch.float16, torch.bfloat16):
            torch.manual_seed(0)
            model = mlla_mm.create_model(name, num_classes=10).cuda().train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            scaler = torch.amp.GradScaler('cuda', enabled=dtype == torch.float16)
            losses, finite_grads = [], True
            for _ in range(steps):
                x = torch.randn(2, 3, size, size, device='cuda')
                target = torch.randint(0, 10, (2,), device='cuda')
                with torch.autocast('cuda', dtype=dtype):
                    loss = torch.nn.functional.cross_entropy(model(x), target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                finite_grads &= all(torch.isfinite(p.grad).all().item() for p in model.parameters()
                                    if p.grad is not None)
                scaler.step(optimizer)
                scaler.update()
                losses.append(loss.item())
            rows.append(dict(model=name, dtype=str(dtype).replace('torch.', ''), losses=losses,
                             passed=all(math.isfinite(v) for v in losses) and finite_grads))
            del model, optimizer
            torch.cuda.empty_cache()
    return rows


def _time_ms(fn, iters=10):
    fn()
    torch.cuda.synchronize()
    start = time.time()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.time() - start) / iters * 1e3


def compile_checks(names=('mlla_t', 'vmamba_t'), sizes=((512, 512), (544, 736)), timing_size=1024):
    import mlla_mm
    from tests.tolerances import TOLERANCES
    rows = []
    for name in names:
        torch._dynamo.reset()
        model = mlla_mm.create_model(name, num_classes=0).cuda().eval()
        graphs = []

        def counting_inductor(graph_module, example_inputs):
            graphs.append(graph_module)
            from torch._inductor.compile_fx import compile_fx
            return compile_fx(graph_module, example_inputs)

        compiled = torch.compile(model, backend=counting_inductor, dynamic=True)
        row = dict(model=name, dtype='bfloat16', sizes=[list(s) for s in sizes])
        with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
            start = time.time()
            errors = []
            for size in sizes:
                x = torch.randn(1, 3, *size, device='cuda')
                got, want = compiled(x).float(), model(x).float()
                tol = TOLERANCES[torch.bfloat16]
                errors.append(((got - want).abs() / (tol['atol'] + tol['rtol'] * want.abs())).max().item())
            row.update(first_calls_s=round(time.time() - start, 1), graphs=len(graphs), worst_ratio=max(errors))
            x = torch.randn(1, 3, timing_size, timing_size, device='cuda')
            row.update(timing_size=timing_size, eager_ms=_time_ms(lambda: model(x)),
                       compiled_ms=_time_ms(lambda: compiled(x)))
        row['passed'] = row['graphs'] == 1 and row['worst_ratio'] <= 1
        rows.append(row)
        del model, compiled
        torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------------------------- report
def environment():
    import triton
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT, capture_output=True,
                           text=True)
    env = dict(torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
               commit=commit.stdout.strip() + ('+dirty' if dirty.stdout.strip() else ''))
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=f'{props.major}.{props.minor}', sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2 ** 30, 1))
    return env


def markdown(result):
    env = result['environment']
    lines = [f'# gpu_check: {env.get("device", "no GPU")}', '',
             ' | '.join(f'{k} {v}' for k, v in env.items()), '']
    kernels = result.get('kernels')
    if kernels:
        failed = [r for r in kernels if not r['passed']]
        lines += [f'## Kernels vs reference: {len(kernels) - len(failed)}/{len(kernels)} pass', '',
                  '| op | case | dtype | tensor | max abs err | err / tolerance | pass |', '|---|---|---|---|---|---|---|']
        lines += [f'| {r["op"]} | {r["case"]} | {r["dtype"]} | {r["tensor"]} | {r["max_abs_err"]:.3g} | '
                  f'{r["worst_ratio"]:.3g} | {"yes" if r["passed"] else "**no**"} |' for r in kernels]
        lines.append('')
    for step in ('pytest', 'benchmark_kernels', 'benchmark_infer', 'benchmark_train'):
        if step in result:
            run = result[step]
            status = 'timed out' if run['returncode'] is None else f'exit {run["returncode"]}'
            lines += [f'## {step}: {status} in {run["seconds"]} s', '', '```', run['output_tail'][-2500:], '```', '']
    if result.get('amp'):
        lines += ['## AMP training steps', '', '| model | dtype | losses | pass |', '|---|---|---|---|']
        lines += [f'| {r["model"]} | {r["dtype"]} | {", ".join(f"{v:.4g}" for v in r["losses"])} | '
                  f'{"yes" if r["passed"] else "**no**"} |' for r in result['amp']]
        lines.append('')
    if result.get('compile'):
        lines += ['## torch.compile (inductor, dynamic=True, bf16 autocast)', '',
                  '| model | graphs | err / tolerance | first calls (s) | size | eager ms | compiled ms | pass |',
                  '|---|---|---|---|---|---|---|---|']
        lines += [f'| {r["model"]} | {r["graphs"]} | {r["worst_ratio"]:.3g} | {r["first_calls_s"]} | '
                  f'{r["timing_size"]} | {r["eager_ms"]:.2f} | {r["compiled_ms"]:.2f} | '
                  f'{"yes" if r["passed"] else "**no**"} |' for r in result['compile']]
        lines.append('')
    for name, error in result.get('errors', {}).items():
        lines += [f'## {name}: error', '', '```', error, '```', '']
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    refusal = cuda_refusal()
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    start = time.time()
    os.makedirs(args.out, exist_ok=True)
    result = dict(environment=environment(), steps=args.steps, errors={})

    def left():
        return args.budget_s - (time.time() - start)

    def save():
        with open(os.path.join(args.out, 'gpu_check.json'), 'w') as f:
            json.dump(result, f, indent=1, default=str)
        with open(os.path.join(args.out, 'gpu_check.md'), 'w') as f:
            f.write(markdown(result))

    # Step budgets: fractions of what is left, so a slow step cannot eat the whole session.
    for step in args.steps:
        print(f'gpu_check: {step} ({left():.0f} s left)', flush=True)
        try:
            if step == 'kernels':
                result['kernels'] = run_kernel_checks('cuda')
            elif step == 'pytest':
                result['pytest'] = run_command(pytest_command(), min(150, left() * 0.3), env={'TRITON_INTERPRET': '0'})
            elif step == 'benchmark_kernels':
                out_json = os.path.join(args.out, 'benchmark_kernels.json')
                result['benchmark_kernels'] = run_command(benchmark_kernels_command(out_json), min(120, left() * 0.3))
                if os.path.exists(out_json):
                    with open(out_json) as f:
                        result['benchmark_kernels']['results'] = json.load(f)
            elif step == 'benchmark':
                commands = benchmark_commands(args.out, args.sizes, benchmark_offers_compile())
                for mode, command in commands.items():
                    result[f'benchmark_{mode}'] = run_command(command, min(150, left() * 0.4))
            elif step == 'amp':
                result['amp'] = amp_training_steps()
            elif step == 'compile':
                result['compile'] = compile_checks()
        except Exception as error:  # recorded; the remaining steps still run
            result['errors'][step] = f'{type(error).__name__}: {error}'
        save()
    result['seconds'] = round(time.time() - start, 1)
    save()
    print(markdown(result))
    failed = [r for r in result.get('kernels', []) + result.get('amp', []) + result.get('compile', [])
              if not r['passed']]
    return 1 if failed or result['errors'] else 0


if __name__ == '__main__':
    sys.exit(main())
