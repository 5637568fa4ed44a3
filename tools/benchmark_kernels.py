#!/usr/bin/env python
"""Speed of the linear attention, the op alone and MLLA's whole mixer layer, on the Triton and PyTorch backends.

For every shape (batch, heads, height x width, head dim 32 unless --dim), level and backend (triton, torch) it times,
with mlla_mm.benchmark.time_ms (torch.utils.benchmark; the same timer as tools/benchmark.py):
  - level 'op':    out = linear_attention(qk, v, (height, width)) with MLLA's setting, qk the packed [B, N, 2C]
                   projection output and v a [B, N, H, D] view of a [B, N, C] tensor, as the layer passes them;
                   fwd+bwd takes torch.autograd.grad w.r.t. qk and v (one packed gradient of qk);
  - level 'layer': mlla_mm.layers.LinearAttention (the qk projection, the op and LePE) on a [B, H, W, C] map;
                   fwd+bwd takes the gradient w.r.t. the input and every parameter.
  - launches:      CUDA kernels (and memsets / copies) one call makes, counted with torch.profiler.

Bytes of the op (b = bytes per element, C = heads * dim, per token; kernels.md sec. 1-2):
  - bytes_min fwd     = 4 * b * C   qk (2C) and v (C) read once, out written once;
  - bytes_min fwd+bwd = 11 * b * C  the forward's 4, then the backward reads qk, v (again: the forward's reads are
                                    gone from cache at these sizes) and grad_out, and writes dqk, dv (7);
  - bytes_algo adds what the Triton kernels move besides: the fp32 per-chunk partial states (written, then read by
    the last program of each (batch, head)) and the reduced state (written, then read), D*D + D floats each.
GB/s = bytes / time; roofline fraction = GB/s / peak HBM bandwidth (--peak-bw, or the table PEAK_BANDWIDTH by GPU
name). 'eff_min' uses bytes_min, 'eff_algo' bytes_algo; the torch reference is rated against the same bytes_min. The
layer (a GEMM, a depthwise conv and the op) gets times, launches and speed-ups only.

After the table it runs the op forward and backward over --recompile-sizes more grid sizes and prints how many
compiled variants each Triton kernel holds: one per (dtype, head dim) means no recompilation per image size.

Needs a CUDA GPU (the Triton interpreter would measure Python). Examples:
  python tools/benchmark_kernels.py --out work_dirs/kernels_h100.json
  python tools/benchmark_kernels.py --dtype fp16 --levels layer --shapes 2x2x200x336,128x2x56x56 --peak-bw 4.8e12
"""
import argparse
import json
import os
import random
import sys

import torch

# Peak HBM bandwidth in bytes/s by a substring of torch.cuda.get_device_name (first match wins).
PEAK_BANDWIDTH = (
    ('H200', 4.8e12),
    ('H100 NVL', 3.9e12),
    ('H100 PCIe', 2.0e12),
    ('H100', 3.35e12),  # SXM5 (HBM3), e.g. 'NVIDIA H100 80GB HBM3'
    ('A100-SXM4-80GB', 2.039e12),
    ('A100', 1.555e12),
)

# (batch, heads, height, width): MLLA-T stages at 224^2 batch 128 (the first is a target), MLLA-B (3-24 heads),
# 512^2 batch 16, the detection stages of 2 x 800 x 1344 (the first is a target), 1024^2 batch 1 (stage 1).
DEFAULT_SHAPES = ('128x2x56x56,128x4x28x28,128x8x14x14,128x16x7x7,64x3x56x56,64x6x28x28,64x12x14x14,64x24x7x7,'
                  '16x2x128x128,2x2x200x336,2x4x100x168,2x8x50x84,1x2x256x256,1x2x56x56')
DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='bf16')
    parser.add_argument('--dim', type=int, default=32, help='head dim D (default 32, as MLLA)')
    parser.add_argument('--shapes', type=parse_shapes, default=DEFAULT_SHAPES,
                        help='comma list of BxHEADSxHEIGHTxWIDTH (default: %(default)s)')
    parser.add_argument('--backends', type=choice_list('triton', 'torch'), default='triton,torch',
                        help='comma list of triton, torch (default: %(default)s)')
    parser.add_argument('--modes', type=choice_list('fwd', 'fwd+bwd'), default='fwd,fwd+bwd',
                        help='comma list of fwd, fwd+bwd (default: %(default)s)')
    parser.add_argument('--levels', type=choice_list('op', 'layer'), default='op,layer',
                        help='comma list of op (the linear attention alone), layer (MLLA\'s mixer: qk projection, '
                        'op, LePE) (default: %(default)s)')
    parser.add_argument('--peak-bw', type=float, help='peak HBM bandwidth in bytes/s (default: by GPU name)')
    parser.add_argument('--warmup', type=int, default=10, help='untimed calls before timing')
    parser.add_argument('--iters', type=int, default=100, help='timed calls (the mean is reported)')
    parser.add_argument('--recompile-sizes', type=int, default=16,
                        help='extra random grid sizes run to count Triton compilations (0 skips)')
    parser.add_argument('--out', help='write the results as JSON here')
    return parser.parse_args(argv)


def choice_list(*choices):
    def parse(text):
        items = text.split(',')
        if not items or any(item not in choices for item in items):
            raise argparse.ArgumentTypeError(f'{text!r}: expected a comma list of {", ".join(choices)}')
        return items
    return parse


def parse_shapes(text):
    try:
        shapes = tuple(tuple(int(x) for x in item.split('x')) for item in text.split(','))
    except ValueError:
        shapes = ()
    if not shapes or any(len(s) != 4 or min(s) <= 0 for s in shapes):
        raise argparse.ArgumentTypeError(f'{text!r}: expected a comma list of BxHEADSxHEIGHTxWIDTH, e.g. 2x2x200x336')
    return shapes


def require_cuda():
    if os.environ.get('TRITON_INTERPRET', '0') == '1':
        sys.exit('benchmark_kernels: TRITON_INTERPRET=1 is set; unset it, the interpreter cannot be benchmarked')
    if not torch.cuda.is_available():
        sys.exit(f'benchmark_kernels: needs a CUDA GPU, and torch {torch.__version__} sees none '
                 f'(torch.version.cuda={torch.version.cuda}); the kernels are tested on the CPU by '
                 f'tests/test_linear_attention.py instead')


def peak_bandwidth(name, override):
    if override:
        return override
    for key, bandwidth in PEAK_BANDWIDTH:
        if key in name:
            return bandwidth
    sys.exit(f'benchmark_kernels: no peak bandwidth known for {name!r}; pass --peak-bw BYTES_PER_S')


def make_inputs(batch, heads, height, width, dim, dtype, seed=0):
    """qk [B, N, 2C] and v [B, N, H, D] (a view of [B, N, C]) as leaves, and grad_out [B, N, H, D]."""
    gen = torch.Generator(device='cuda').manual_seed(seed)
    tokens, channels = height * width, heads * dim
    qk = torch.randn(batch, tokens, 2 * channels, device='cuda', dtype=dtype, generator=gen).requires_grad_()
    v = torch.randn(batch, tokens, channels, device='cuda', dtype=dtype, generator=gen)
    v = v.view(batch, tokens, heads, dim).detach().requires_grad_()
    grad_out = torch.randn(batch, tokens, heads, dim, device='cuda', dtype=dtype, generator=gen)
    return qk, v, grad_out


def state_bytes(batch, heads, tokens, dim, dtype):
    """Extra HBM bytes of the Triton kernels per reduction: partial states written and read, reduced state written
    and read once."""
    from mlla_mm.kernels.linear_attention import triton as la_triton
    _, reduce_n, _, _ = la_triton._config(dim, dim, dtype)
    _, chunks = la_triton._chunking(tokens, batch * heads, reduce_n, torch.device('cuda'))
    record = batch * heads * (dim * dim + dim) * 4
    return 2 * record * (chunks if chunks > 1 else 0) + 2 * record


def count_launches(fn):
    """CUDA-side events (kernels, memsets, copies) of one call of fn, from torch.profiler."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for event in prof.events() if event.device_type == DeviceType.CUDA)


def workloads(level, backend, batch, heads, height, width, dim, dtype):
    """{'fwd': callable, 'fwd+bwd': callable} for one level and backend."""
    from mlla_mm.kernels import linear_attention
    from mlla_mm.layers import LinearAttention

    if level == 'op':
        qk, v, grad_out = make_inputs(batch, heads, height, width, dim, dtype)

        def forward():
            return linear_attention(qk, v, (height, width), backend=backend)
        leaves = (qk, v)
    else:
        layer = LinearAttention(heads * dim, heads, backend=backend).to(device='cuda', dtype=dtype)
        x = torch.randn(batch, height, width, heads * dim, device='cuda', dtype=dtype, requires_grad=True)
        grad_out = torch.randn_like(x)

        def forward():
            return layer(x)
        leaves = (x, *layer.parameters())
    return {'fwd': forward, 'fwd+bwd': lambda: torch.autograd.grad(forward(), leaves, grad_out)}


def bench(args):
    from mlla_mm.benchmark import environment, time_ms

    dtype, dim = DTYPES[args.dtype], args.dim
    header = environment(torch.device('cuda'))
    header['peak_bandwidth'] = peak_bandwidth(header['device'], args.peak_bw)
    header['dtype'] = args.dtype
    print(f"# {header['device']} | torch {header['versions']['torch']} | triton {header['versions']['triton']} | "
          f"mlla_mm {header['versions']['mlla_mm']} | commit {header['commit']}"
          f" | peak {header['peak_bandwidth'] / 1e12:.2f} TB/s | {args.dtype}, d={dim}")
    print(f"{'B':>4} {'heads':>5} {'HxW':>9} {'N':>6} {'level':>5} {'mode':>8} {'backend':>7} {'ms':>8} "
          f"{'launch':>6} {'GB/s':>7} {'eff_min':>7} {'eff_algo':>8} {'speedup':>7}")
    rows = []
    for batch, heads, height, width in args.shapes:
        tokens = height * width
        per_token = batch * tokens * heads * dim * dtype.itemsize
        for level in args.levels:
            runs = {backend: workloads(level, backend, batch, heads, height, width, dim, dtype)
                    for backend in args.backends}
            for mode in args.modes:
                bytes_min = (4 if mode == 'fwd' else 11) * per_token if level == 'op' else None
                extra = state_bytes(batch, heads, tokens, dim, dtype) * (1 if mode == 'fwd' else 2)
                mode_rows = []
                for backend in args.backends:
                    fn = runs[backend][mode]
                    ms = time_ms(fn, iters=args.iters, warmup=args.warmup)
                    bytes_algo = bytes_min + extra if bytes_min and backend == 'triton' else None
                    peak = header['peak_bandwidth']
                    mode_rows.append(dict(
                        batch=batch, heads=heads, height=height, width=width, tokens=tokens, dim=dim,
                        dtype=args.dtype, level=level, mode=mode, backend=backend, ms=ms,
                        launches=count_launches(fn), bytes_min=bytes_min, bytes_algo=bytes_algo,
                        gb_s=bytes_min / ms * 1e-6 if bytes_min else None,
                        eff_min=bytes_min / (ms * 1e-3) / peak if bytes_min else None,
                        eff_algo=bytes_algo / (ms * 1e-3) / peak if bytes_algo else None))
                torch_ms = {row['backend']: row['ms'] for row in mode_rows}.get('torch')
                for row in mode_rows:
                    row['speedup_vs_torch'] = torch_ms / row['ms'] if torch_ms else None
                    print(format_row(row))
                rows.extend(mode_rows)
            del runs
    compilations = count_compilations(args, dtype, dim) if 'triton' in args.backends and args.recompile_sizes \
        else None
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(dict(header=header, rows=rows, compilations=compilations), f, indent=1)
        print(f'wrote {args.out}')


def format_row(row):
    def percent(x):
        return '-' if x is None else f'{x:.1%}'
    grid = f"{row['height']}x{row['width']}"
    speedup = '-' if row['speedup_vs_torch'] is None else f"{row['speedup_vs_torch']:.2f}x"
    gb_s = '-' if row['gb_s'] is None else f"{row['gb_s']:.0f}"
    return (f"{row['batch']:>4} {row['heads']:>5} {grid:>9} {row['tokens']:>6} {row['level']:>5} {row['mode']:>8} "
            f"{row['backend']:>7} {row['ms']:>8.4f} {row['launches']:>6} {gb_s:>7} {percent(row['eff_min']):>7} "
            f"{percent(row['eff_algo']):>8} {speedup:>7}")


def count_compilations(args, dtype, dim):
    """Run --recompile-sizes random grids (forward and backward) and count each kernel's compiled variants."""
    from mlla_mm.kernels import linear_attention
    from mlla_mm.kernels.linear_attention import triton as la_triton

    rng = random.Random(0)
    sizes = [(rng.randint(1, 300), rng.randint(1, 300)) for _ in range(args.recompile_sizes)]
    for height, width in sizes:
        qk, v, grad_out = make_inputs(rng.randint(1, 3), 2, height, width, dim, dtype)
        torch.autograd.grad(linear_attention(qk, v, (height, width), backend='triton'), (qk, v), grad_out)
    torch.cuda.synchronize()
    device = torch.cuda.current_device()
    kernels = ('_fwd_state_kernel', '_fwd_out_kernel', '_bwd_state_kernel', '_bwd_kv_kernel')
    # JITFunction.device_caches[device][0] maps a specialisation key to its compiled kernel (triton 3.x).
    counts = {name: len(getattr(la_triton, name).device_caches[device][0]) for name in kernels}
    shapes = len(args.shapes) + len(sizes)
    print(f'compiled variants per kernel after {shapes} grid sizes ({args.dtype}, d={dim}): {counts}'
          f'{"" if set(counts.values()) == {1} else "  <- more than one: something size-dependent is specialised"}')
    return dict(grid_sizes=shapes, variants=counts)


def main(argv=None):
    args = parse_args(argv)
    require_cuda()
    bench(args)


if __name__ == '__main__':
    main()
