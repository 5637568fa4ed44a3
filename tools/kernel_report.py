#!/usr/bin/env python
"""Static report of the repo's Triton kernels for a GPU target, on any machine (no GPU needed).

For every op in OPS and every configuration (model x input size x batch x dtype), the op's Triton path runs forward
and backward on CPU tensors of the shapes that model's stages see, with every kernel launch intercepted (nothing
executes on the host or a device). Each launch is specialised exactly as triton's launcher would (types, ==1 and
%16 specialisations of the size arguments not in ``do_not_specialize``, pointer alignment, constexprs), and every
distinct variant is compiled for the target (default sm_90) with triton's compiler; ``ptxas -v`` from the triton
wheel then gives registers and spills. It prints one row per compiled variant (registers, spill stores / loads,
shared memory, warps, the configurations that launch it) and the number of distinct variants per kernel: a size
argument that leaked into the specialisation shows up as more variants than (dtype x flags).

Default (all ops; MLLA-T/S/B and VMamba-T/S/B; 224x224 and 800x1216; batch 1 and 2; fp16, bf16, fp32):
  python tools/kernel_report.py
A subset, with a JSON record, failing (exit 1) on any spill in a 16-bit configuration:
  python tools/kernel_report.py --ops selective_scan,cross_scan --models vmamba_t --sizes 224 --batches 1 \\
      --dtypes bf16,fp16 --json work_dirs/kernel_report.json --fail-on-spills

All ops on Spatial-Mamba's shapes (its selective scan and state fusion):
  python tools/kernel_report.py --models spatialmamba_t,spatialmamba_s,spatialmamba_b

Adding an op: write a function ``run_<op>(stage, batch, dtype)`` that calls the op's public function with
backend='triton' on CPU tensors of that stage's shapes and back-propagates, and add a row to OPS with the model
family whose stages it serves (a new family also needs its stage widths in ``model_stages``). Ops whose module is
missing, or whose run raises, are reported as skipped with the reason, and the others still run.
"""
import argparse
import importlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16, 'fp32': torch.float32}
MODELS = ('mlla_t', 'mlla_s', 'mlla_b', 'vmamba_t', 'vmamba_s', 'vmamba_b')
# Families with Triton ops but outside the default sweep (ask for them with --models).
EXTRA_MODELS = ('spatialmamba_t', 'spatialmamba_s', 'spatialmamba_b')
SIZES = ('224', '800x1216')


# ----------------------------------------------------------------------------------------------- model stage shapes
def model_stages(model, height, width):
    """[{family, stage, height, width, ...}] of the four stages (strides 4, 8, 16, 32; ceil at each step)."""
    family, arch = model.split('_')
    arch = dict(t='tiny', s='small', b='base')[arch]
    if family == 'vmamba':
        from mlla_mm.models.vmamba import VMAMBA_ARCHS
        cfg = VMAMBA_ARCHS[arch]
    elif family == 'spatialmamba':
        from mlla_mm.models.spatial_mamba import SPATIAL_MAMBA_ARCHS
        cfg = SPATIAL_MAMBA_ARCHS[arch]
    else:
        from mlla_mm.models.mlla import MLLA_ARCHS
        cfg = MLLA_ARCHS[arch]
    stages = []
    h, w = math.ceil(height / 4), math.ceil(width / 4)
    for i in range(4):
        channels = cfg['embed_dim'] * 2 ** i
        stage = dict(family=family, model=model, stage=i + 1, height=h, width=w, channels=channels)
        if family == 'vmamba':
            stage.update(d_inner=int(cfg['ssm_ratio'] * channels), d_state=1, dt_rank=math.ceil(channels / 16))
        elif family == 'spatialmamba':
            stage.update(d_inner=2 * channels, d_state=1)  # StructureAwareSSM: expand 2, one scan route
        else:
            stage.update(heads=cfg['num_heads'][i], head_dim=channels // cfg['num_heads'][i])
        stages.append(stage)
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return stages


# ---------------------------------------------------------------------------------------------- ops: one run each
def _randn(*shape, dtype, grad=True):
    return torch.randn(*shape, dtype=torch.float32).to(dtype).requires_grad_(grad)


def run_selective_scan(stage, batch, dtype):
    """VMamba's call: 4 routes folded into the channels, B/C groups = 4, fp32 output (as SS2D under autocast).
    Spatial-Mamba's: one route, one B/C group, no D (its skip is in the state fusion)."""
    from mlla_mm.kernels.selective_scan import selective_scan
    routes = 4 if stage['family'] == 'vmamba' else 1
    dim, length, n_state = routes * stage['d_inner'], stage['height'] * stage['width'], stage['d_state']
    u, delta = _randn(batch, dim, length, dtype=dtype), _randn(batch, dim, length, dtype=dtype)
    B = _randn(batch, routes, n_state, length, dtype=dtype)
    C = _randn(batch, routes, n_state, length, dtype=dtype)
    A, bias = _randn(dim, n_state, dtype=torch.float32), _randn(dim, dtype=torch.float32)
    D = _randn(dim, dtype=torch.float32) if routes == 4 else None
    y = selective_scan(u, delta, A, B, C, D, bias, delta_softplus=True, output_fp32=True, backend='triton')
    y.backward(torch.ones_like(y))


def run_cross_scan(stage, batch, dtype):
    """SS2D's calls: cross_scan of the conv output (the autocast dtype), cross_merge of the scan's fp32 output."""
    from mlla_mm.kernels.cross_scan import cross_merge, cross_scan
    channels, height, width = stage['d_inner'], stage['height'], stage['width']
    routes = cross_scan(_randn(batch, channels, height, width, dtype=dtype), backend='triton')
    routes.backward(torch.ones_like(routes))
    merged = cross_merge(_randn(batch, 4, channels, height * width, dtype=torch.float32), height, width,
                         backend='triton')
    merged.backward(torch.ones_like(merged))


def run_linear_attention(stage, batch, dtype):
    """MLLA's call at one stage: the packed qk projection [B, N, 2C], v [B, N, heads, head_dim] and LePE's 3x3
    depthwise weights, over the stage's H x W grid."""
    from mlla_mm.kernels.linear_attention import linear_attention
    tokens, heads, head_dim = stage['height'] * stage['width'], stage['heads'], stage['head_dim']
    channels = heads * head_dim
    qk = _randn(batch, tokens, 2 * channels, dtype=dtype)
    v = _randn(batch, tokens, heads, head_dim, dtype=dtype)
    out = linear_attention(qk, v, (stage['height'], stage['width']),
                           lepe_weight=_randn(channels, 1, 3, 3, dtype=torch.float32),
                           lepe_bias=_randn(channels, dtype=torch.float32), backend='triton')
    out.backward(torch.ones_like(out))


def run_state_fusion(stage, batch, dtype):
    """Spatial-Mamba's call: the scan's float32 states fused over the map; C and u in the autocast dtype."""
    from mlla_mm.kernels.state_fusion import state_fusion
    channels, height, width = stage['d_inner'], stage['height'], stage['width']
    h = _randn(batch, channels, height, width, dtype=torch.float32)
    kernels = [_randn(channels, 1, 3, 3, dtype=torch.float32) for _ in range(3)]
    y = state_fusion(h, *kernels, _randn(3, dtype=torch.float32), _randn(batch, 1, height, width, dtype=dtype),
                     _randn(channels, dtype=torch.float32), _randn(batch, channels, height, width, dtype=dtype),
                     backend='triton')
    y.backward(torch.ones_like(y))


def run_forget_gate(stage, batch, dtype):
    """The forget-gate op at an MLLA stage, each direction: q, k, v in ``dtype`` (v with the normaliser column the
    ablation layer appends; that layer itself calls it in float32), g float32."""
    from mlla_mm.kernels.forget_gate import forget_gate_attention
    tokens, heads, head_dim = stage['height'] * stage['width'], stage['heads'], stage['head_dim']
    for direction in ('causal', 'bidirectional', '4-direction'):
        q, k = (_randn(batch, tokens, heads, head_dim, dtype=dtype) for _ in range(2))
        g = (-torch.rand(batch, tokens, heads, head_dim)).requires_grad_()
        v = _randn(batch, tokens, heads, head_dim + 1, dtype=dtype)
        out = forget_gate_attention(q, k, v, g, direction=direction, hw=(stage['height'], stage['width']),
                                    backend='triton')
        out.backward(torch.ones_like(out))


# (op, module that must exist, model family whose stages it serves, run function). One op may serve several
# families (one row each); a new op or family is one more row.
OPS = (
    ('selective_scan', 'mlla_mm.kernels.selective_scan.triton', 'vmamba', run_selective_scan),
    ('cross_scan', 'mlla_mm.kernels.cross_scan.triton', 'vmamba', run_cross_scan),
    ('linear_attention', 'mlla_mm.kernels.linear_attention.triton', 'mlla', run_linear_attention),
    ('forget_gate', 'mlla_mm.kernels.forget_gate.triton', 'mlla', run_forget_gate),
    ('selective_scan', 'mlla_mm.kernels.selective_scan.triton', 'spatialmamba', run_selective_scan),
    ('state_fusion', 'mlla_mm.kernels.state_fusion.triton', 'spatialmamba', run_state_fusion),
)
OP_NAMES = tuple(dict.fromkeys(op for op, *_ in OPS))


# ----------------------------------------------------------------------------------------- capture and compilation
@contextmanager
def captured_launches(launches):
    """Run ops on CPU tensors with backend='triton' allowed and every kernel launch recorded instead of run."""
    from triton.runtime.jit import JITFunction
    from mlla_mm.kernels import backend

    def record(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs, grid))

    saved_run, saved_reason = JITFunction.run, backend.triton_unavailable_reason
    JITFunction.run = record
    backend.triton_unavailable_reason = lambda device: None
    try:
        yield
    finally:
        JITFunction.run, backend.triton_unavailable_reason = saved_run, saved_reason


class Compiler:
    """Specialises recorded launches the way triton's launcher does and compiles each distinct one once."""

    def __init__(self, arch):
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        self.target = GPUTarget('cuda', arch, 32)
        self.backend = make_backend(self.target)
        self.binders = {}
        bin_dir = os.path.join(os.path.dirname(importlib.import_module('triton').__file__), 'backends', 'nvidia',
                               'bin')
        self.ptxas = os.path.join(bin_dir, 'ptxas')
        self.variants = {}  # (kernel name, key) -> record

    def key(self, kernel, args, kwargs):
        from triton.runtime.jit import create_function_from_signature
        if kernel not in self.binders:
            self.binders[kernel] = create_function_from_signature(kernel.signature, kernel.params, self.backend)
        kwargs = dict(kwargs, debug=False)
        bound, specialization, options = self.binders[kernel](*args, **kwargs)
        return bound, specialization, options, kwargs, str(specialization) + str(sorted(options.items()))

    def add(self, kernel, args, kwargs, grid, label):
        bound, specialization, options, kwargs, key = self.key(kernel, args, kwargs)
        name = kernel.fn.__name__
        record = self.variants.get((name, key))
        if record is None:
            record = self.variants[(name, key)] = dict(
                kernel=name, module=kernel.fn.__module__, labels=[], programs={},
                constexprs={p.name: _plain(bound[p.name]) for p in kernel.params if p.is_constexpr},
                pointer_dtypes=sorted({s[0] for s in specialization if str(s[0]).startswith('*')}),
                _compile=(kernel, bound, specialization, options, kwargs))
        record['labels'].append(label)
        if not callable(grid):  # programs per launch (a grid computed from the meta-parameters is left out)
            record['programs'][label] = math.prod(grid)

    def compile_all(self):
        from triton import compile as triton_compile
        from triton.compiler import ASTSource
        for record in self.variants.values():
            kernel, bound, specialization, options, kwargs = record.pop('_compile')
            options, signature, constexprs, attrs = kernel._pack_args(self.backend, kwargs, bound, specialization,
                                                                      options)
            start = time.time()
            compiled = triton_compile(ASTSource(kernel, signature, constexprs, attrs), target=self.target,
                                      options=options.__dict__)
            record.update(compile_s=round(time.time() - start, 2), shared_bytes=compiled.metadata.shared,
                          num_warps=compiled.metadata.num_warps, num_stages=compiled.metadata.num_stages,
                          **self.ptxas_usage(compiled.asm['ptx'], compiled.metadata.name))

    def ptxas_usage(self, ptx, name):
        arch = f'sm_{self.target.arch}a' if self.target.arch >= 90 else f'sm_{self.target.arch}'
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'kernel.ptx')
            with open(path, 'w') as f:
                f.write(ptx)
            result = subprocess.run([self.ptxas, '-v', f'--gpu-name={arch}', path, '-o', os.path.join(tmp, 'k.o')],
                                    capture_output=True, text=True, check=True)
        text = result.stdout + result.stderr
        spills = re.search(r'(\d+) bytes spill stores, (\d+) bytes spill loads', text)
        return dict(registers=int(re.search(r'Used (\d+) registers', text).group(1)),
                    spill_stores=int(spills.group(1)), spill_loads=int(spills.group(2)),
                    stack_bytes=int(re.search(r'(\d+) bytes stack frame', text).group(1)))


def _plain(value):
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)


def _size(text):
    height, _, width = text.partition('x')
    return int(height), int(width or height)


def report(ops, models, sizes, batches, dtypes, arch=90):
    """Capture, compile and measure; returns (variants, skipped ops, configurations run)."""
    if os.environ.get('TRITON_INTERPRET', '0') == '1':
        raise RuntimeError('kernel_report compiles real kernels: run it with TRITON_INTERPRET=0 (unset), since '
                           'triton reads that variable when the kernels are defined')
    compiler = Compiler(arch)
    skipped, configurations = {}, 0
    for op, module, family, run in OPS:
        if op not in ops:
            continue
        try:
            importlib.import_module(module)
        except ImportError as error:
            skipped[op] = f'{module} does not import ({error})'
            continue
        for model in models:
            if not model.startswith(family + '_'):
                continue
            for size in sizes:
                for batch in batches:
                    for dtype in dtypes:
                        for stage in model_stages(model, *_size(size)):
                            launches = []
                            try:
                                with captured_launches(launches):
                                    run(stage, batch, DTYPES[dtype])
                            except Exception as error:  # one op's broken entry must not hide the others
                                skipped[op] = f'{type(error).__name__}: {error}'
                                continue
                            configurations += 1
                            label = f'{op}:{model}@{size}/b{batch}/{dtype}/s{stage["stage"]}'
                            for kernel, args, kwargs, grid in launches:
                                compiler.add(kernel, args, kwargs, grid, label)
    compiler.compile_all()
    return list(compiler.variants.values()), skipped, configurations


def sixteen_bit(record):
    return any(d in ('*fp16', '*bf16') for d in record['pointer_dtypes'])


def print_report(variants, skipped, configurations, out=sys.stdout):
    print(f'{configurations} configurations, {len(variants)} compiled variants', file=out)
    header = (f'{"kernel":30} {"pointers":18} {"regs":>4} {"spill st/ld":>11} {"shared":>7} {"warps":>5} '
              f'{"uses":>5} {"min grid":>8}  constexprs')
    print(header, file=out)
    for r in sorted(variants, key=lambda r: (r['kernel'], r['pointer_dtypes'], str(r['constexprs']))):
        flags = ' '.join(f'{k}={v}' for k, v in r['constexprs'].items())
        fewest = min(r['programs'].values()) if r['programs'] else '-'
        print(f'{r["kernel"]:30} {",".join(r["pointer_dtypes"]):18} {r["registers"]:>4} '
              f'{r["spill_stores"]:>5}/{r["spill_loads"]:<5} {r["shared_bytes"]:>7} {r["num_warps"]:>5} '
              f'{len(r["labels"]):>5} {fewest:>8}  {flags}', file=out)
    print('variants per kernel:', file=out)
    counts = {}
    for r in variants:
        counts[r['kernel']] = counts.get(r['kernel'], 0) + 1
    for name, count in sorted(counts.items()):
        print(f'  {name}: {count}', file=out)
    spilling = [r for r in variants if r['spill_stores'] or r['spill_loads']]
    print(f'variants with spills: {len(spilling)} ({sum(sixteen_bit(r) for r in spilling)} with 16-bit inputs)',
          file=out)
    for op, why in skipped.items():
        print(f'skipped {op}: {why}', file=out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--ops', default=','.join(OP_NAMES), help='comma list of ops (default: %(default)s)')
    parser.add_argument('--models', default=','.join(MODELS),
                        help=f'comma list (default: %(default)s; also: {",".join(EXTRA_MODELS)})')
    parser.add_argument('--sizes', default=','.join(SIZES), help='comma list of S or HxW (default: %(default)s)')
    parser.add_argument('--batches', default='1,2', help='comma list (default: %(default)s)')
    parser.add_argument('--dtypes', default='fp16,bf16,fp32', help='comma list of fp16, bf16, fp32 '
                        '(default: %(default)s)')
    parser.add_argument('--arch', type=int, default=90, help='compute capability to compile for (default: 90)')
    parser.add_argument('--json', help='also write the records to this JSON file')
    parser.add_argument('--fail-on-spills', action='store_true',
                        help='exit 1 when a variant with fp16/bf16 pointers spills')
    args = parser.parse_args(argv)
    args.ops = args.ops.split(',')
    unknown = [op for op in args.ops if op not in OP_NAMES]
    if unknown:
        parser.error(f'unknown ops {unknown}; known: {list(OP_NAMES)}')
    args.models = args.models.split(',')
    unknown = [m for m in args.models if m not in MODELS + EXTRA_MODELS]
    if unknown:
        parser.error(f'unknown models {unknown}; known: {list(MODELS + EXTRA_MODELS)}')
    args.dtypes = args.dtypes.split(',')
    unknown = [d for d in args.dtypes if d not in DTYPES]
    if unknown:
        parser.error(f'unknown dtypes {unknown}; known: {sorted(DTYPES)}')
    args.sizes = args.sizes.split(',')
    args.batches = [int(b) for b in args.batches.split(',')]
    return args


def main(argv=None):
    args = parse_args(argv)
    os.environ['TRITON_INTERPRET'] = '0'  # before the kernels are imported: compile them, do not interpret
    torch.set_num_threads(min(4, torch.get_num_threads()))
    variants, skipped, configurations = report(args.ops, args.models, args.sizes, args.batches, args.dtypes,
                                               args.arch)
    print_report(variants, skipped, configurations)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(dict(arch=args.arch, configurations=configurations, skipped=skipped, variants=variants), f,
                      indent=1)
    if args.fail_on_spills and any((r['spill_stores'] or r['spill_loads']) and sixteen_bit(r) for r in variants):
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
