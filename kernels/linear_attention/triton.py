"""Fused Triton forward and backward of MLLA linear attention; the math is in ``reference.py``.

Notation per (batch b, head h), tokens n of an H x W grid, phi = ELU + 1, R_n = the 2-D RoPE rotation of token n:
    Q = phi(q), K = phi(k), km = sum_n K_n / N, S = sum_n (R_n K_n) v_n^T / N      (S: D x D, km: D; "the state")
    z_n = 1 / (Q_n . km + eps),  out_n = (R_n Q_n) S z_n

Four kernels; each reads every compulsory tensor once (fwd: q, k, v, out; bwd: q, k, v, do, dq, dk, dv):
    forward   _fwd_state_kernel  grid (chunks, B*H): streams k, v of one token chunk, writes a partial state
              _fwd_out_kernel    grid (token tiles, B*H): q -> out
    backward  _bwd_state_kernel  grid (chunks, B*H): streams q, do, recomputes z and out from q and the saved state,
                                 writes dq and a partial (dS, dkm)
              _bwd_kv_kernel     grid (token tiles, B*H): k, v -> dk, dv
The token-axis reductions are split into chunks so that B*H*chunks programs fill the GPU even at batch 1; the chunk
partials (D*D + D floats each) are summed by torch, which is deterministic, unlike float atomics. Only q, k, v (the
caller's tensors, no copies) and the fp32 state are saved for backward; phi, RoPE, z and out are recomputed.

Inside a kernel a [tokens, D] tile is loaded with its native strides and split into its even and odd channels, the
two halves of each RoPE pair: the rotation is then elementwise, and the D x D products are taken per half
(q~ S = q~_even S[even rows] + q~_odd S[odd rows]), so no tile is ever re-interleaved except for dq and dk.
Sizes (N, H, W) are runtime arguments excluded from specialization, so one compiled kernel serves every image size.
"""
import math
import os

import torch
import triton
import triton.language as tl

from . import check_inputs
from .reference import EPS, ROPE_BASE

_EPS = tl.constexpr(EPS)
_NEG_LOG2_BASE = tl.constexpr(-math.log2(ROPE_BASE))
_INV_2PI = tl.constexpr(1.0 / (2.0 * math.pi))
# 2*pi split in two (Cody-Waite): k * _2PI_HI is exact in fp32 for k < 2**16, i.e. angles up to ~4e5 rad.
_2PI_HI = tl.constexpr(6.28125)
_2PI_LO = tl.constexpr(2.0 * math.pi - 6.28125)

# Launch shape. The reduction kernels loop over tiles of tokens (software-pipelined in NUM_STAGES stages) across a
# chunk of at least MIN_CHUNK tokens, so that each partial state (4 KiB at D=32) is amortised over >= 64 KiB of reads;
# chunks are added until about PROGRAMS_PER_SM programs per SM are running.
MAX_HEAD_DIM = 128
MIN_CHUNK = 512
PROGRAMS_PER_SM = 4
NUM_STAGES = 3
# (reduction tile, apply tile, warps) by (BLOCK_D, element size): the largest tiles with which no kernel spills
# registers on sm_90 (checked with ptxas at D = 16..128; only fp32 at D = 128 spills, 100-300 bytes).
_TILES = {(32, 2): (64, 128, 4), (64, 2): (64, 64, 8), (128, 2): (32, 32, 8),
          (32, 4): (32, 64, 8), (64, 4): (16, 32, 8), (128, 4): (16, 16, 8)}


@triton.jit
def _load_features(ptr, offs_n, tok_mask, stride_n, stride_d, D: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    """phi(x) of a [BLOCK_N, D] tile as its (even, odd) channel halves, fp32, zero outside the tile."""
    offs_d = tl.arange(0, BLOCK_D)
    mask = tok_mask[:, None] & (offs_d[None, :] < D)
    x = tl.load(ptr + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d, mask=mask, other=0.0)
    x = x.to(tl.float32)
    # ELU(x) + 1 = x + 1 for x > 0, exp(x) otherwise; padding must give 0, not phi(0) = 1.
    phi = tl.where(mask, tl.where(x > 0, x + 1.0, tl.exp(x)), 0.0)
    return tl.split(tl.reshape(phi, (BLOCK_N, BLOCK_D // 2, 2)))


@triton.jit
def _rope_cos_sin(offs_n, width, head, num_heads, D: tl.constexpr, BLOCK_D: tl.constexpr,
                  FAST_SINCOS: tl.constexpr):
    """cos, sin [BLOCK_N, BLOCK_D // 2] of the RoPE angles of this head's channel pairs at tokens offs_n.

    Pair p (numbered over all C = num_heads * D channels, as the reference does) turns by row * theta_p for
    p < C/4 and by col * theta_(p - C/4) otherwise, theta_j = 10000^(-j / (C/4)).
    """
    quarter = (num_heads * D) // 4
    pair = head * (D // 2) + tl.arange(0, BLOCK_D // 2)
    is_row = pair < quarter
    freq = tl.where(is_row, pair, pair - quarter).to(tl.float32)
    theta = tl.exp2(freq / quarter * _NEG_LOG2_BASE)
    row = (offs_n // width).to(tl.float32)
    col = (offs_n % width).to(tl.float32)
    angle = tl.where(is_row[None, :], row[:, None], col[:, None]) * theta[None, :]
    # Reduce to [-pi, pi], where the hardware approximations are accurate to ~1e-6 even for rows in the thousands.
    turns = tl.floor(angle * _INV_2PI + 0.5)
    angle = angle - turns * _2PI_HI - turns * _2PI_LO
    if FAST_SINCOS:
        # One MUFU op each; libdevice's sinf/cosf cost ~20 instructions each, which at ~D instructions per byte
        # would make the kernel issue-bound rather than memory-bound.
        cos = tl.inline_asm_elementwise('cos.approx.f32 $0, $1;', '=f,f', [angle], dtype=tl.float32, is_pure=True,
                                        pack=1)
        sin = tl.inline_asm_elementwise('sin.approx.f32 $0, $1;', '=f,f', [angle], dtype=tl.float32, is_pure=True,
                                        pack=1)
        return cos, sin
    return tl.cos(angle), tl.sin(angle)


@triton.jit
def _mma(x, dtype: tl.constexpr, INTERPRET_BF16: tl.constexpr):
    """x as a tl.dot operand of ``dtype``. Triton's CPU interpreter multiplies bf16 tiles as their raw uint16 bits,
    so there (INTERPRET_BF16) the bf16-rounded values go in as fp32, which is the same product."""
    x = x.to(dtype)
    if INTERPRET_BF16:
        x = x.to(tl.float32)
    return x


@triton.jit
def _rotate(even, odd, cos, sin):
    return even * cos - odd * sin, even * sin + odd * cos


@triton.jit
def _rotate_back(even, odd, cos, sin):
    """The transposed (inverse) rotation, for gradients."""
    return even * cos + odd * sin, odd * cos - even * sin


@triton.jit
def _load_state(ptr, scale, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """A [D*D matrix, D vector] state record, times scale, as (mat[even rows], mat[odd rows], vec[even], vec[odd])."""
    offs_j = tl.arange(0, BLOCK_D // 2)
    offs_d = tl.arange(0, BLOCK_D)
    pair_mask = offs_j < D // 2
    mask = pair_mask[:, None] & (offs_d[None, :] < D)
    rows = ptr + (2 * offs_j)[:, None] * D + offs_d[None, :]
    mat_even = tl.load(rows, mask=mask, other=0.0) * scale
    mat_odd = tl.load(rows + D, mask=mask, other=0.0) * scale
    vec_even = tl.load(ptr + D * D + 2 * offs_j, mask=pair_mask, other=0.0) * scale
    vec_odd = tl.load(ptr + D * D + 2 * offs_j + 1, mask=pair_mask, other=0.0) * scale
    return mat_even, mat_odd, vec_even, vec_odd


@triton.jit
def _store_state(ptr, mat_even, mat_odd, vec_even, vec_odd, D: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_j = tl.arange(0, BLOCK_D // 2)
    offs_d = tl.arange(0, BLOCK_D)
    pair_mask = offs_j < D // 2
    mask = pair_mask[:, None] & (offs_d[None, :] < D)
    rows = ptr + (2 * offs_j)[:, None] * D + offs_d[None, :]
    tl.store(rows, mat_even, mask=mask)
    tl.store(rows + D, mat_odd, mask=mask)
    tl.store(ptr + D * D + 2 * offs_j, vec_even, mask=pair_mask)
    tl.store(ptr + D * D + 2 * offs_j + 1, vec_odd, mask=pair_mask)


@triton.jit
def _store_pairs(ptr, offs_n, tok_mask, stride_n, stride_d, even, odd, D: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    """Re-interleave (even, odd) channel halves into a [BLOCK_N, D] tile and store it in the pointer's dtype."""
    offs_d = tl.arange(0, BLOCK_D)
    x = tl.reshape(tl.join(even, odd), (BLOCK_N, BLOCK_D))
    tl.store(ptr + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d, x.to(ptr.dtype.element_ty),
             mask=tok_mask[:, None] & (offs_d[None, :] < D))


@triton.jit(do_not_specialize=['n_tokens', 'width', 'num_heads', 'chunk_tokens'])
def _fwd_state_kernel(k_ptr, v_ptr, part_ptr,
                      stride_kb, stride_kn, stride_kh, stride_kd,
                      stride_vb, stride_vn, stride_vh, stride_vd,
                      n_tokens, width, num_heads, chunk_tokens,
                      D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                    INTERPRET_BF16: tl.constexpr, FAST_SINCOS: tl.constexpr):
    """Partial state of one token chunk: sum_n (R_n K_n) v_n^T and sum_n K_n (not yet divided by N)."""
    chunk = tl.program_id(0)
    bh = tl.program_id(1)
    batch = bh // num_heads
    head = bh % num_heads
    k_ptr += batch.to(tl.int64) * stride_kb + head * stride_kh
    v_ptr += batch.to(tl.int64) * stride_vb + head * stride_vh
    dot_dtype = v_ptr.dtype.element_ty
    offs_d = tl.arange(0, BLOCK_D)

    kv_even = tl.zeros((BLOCK_D // 2, BLOCK_D), tl.float32)
    kv_odd = tl.zeros((BLOCK_D // 2, BLOCK_D), tl.float32)
    ksum_even = tl.zeros((BLOCK_D // 2,), tl.float32)
    ksum_odd = tl.zeros((BLOCK_D // 2,), tl.float32)
    start = chunk * chunk_tokens
    end = tl.minimum(start + chunk_tokens, n_tokens)
    for n0 in tl.range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        tok_mask = offs_n < end
        k_even, k_odd = _load_features(k_ptr, offs_n, tok_mask, stride_kn, stride_kd, D, BLOCK_N, BLOCK_D)
        cos, sin = _rope_cos_sin(offs_n, width, head, num_heads, D, BLOCK_D, FAST_SINCOS)
        kr_even, kr_odd = _rotate(k_even, k_odd, cos, sin)
        v = tl.load(v_ptr + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=tok_mask[:, None] & (offs_d[None, :] < D), other=0.0)
        v = _mma(v, dot_dtype, INTERPRET_BF16)
        kr_even = _mma(kr_even, dot_dtype, INTERPRET_BF16)
        kr_odd = _mma(kr_odd, dot_dtype, INTERPRET_BF16)
        kv_even = tl.dot(tl.trans(kr_even), v, kv_even, input_precision=PRECISION)
        kv_odd = tl.dot(tl.trans(kr_odd), v, kv_odd, input_precision=PRECISION)
        ksum_even += tl.sum(k_even, axis=0)
        ksum_odd += tl.sum(k_odd, axis=0)
    part_ptr += (chunk * tl.num_programs(1) + bh).to(tl.int64) * (D * D + D)
    _store_state(part_ptr, kv_even, kv_odd, ksum_even, ksum_odd, D, BLOCK_D)


@triton.jit(do_not_specialize=['n_tokens', 'width', 'num_heads'])
def _fwd_out_kernel(q_ptr, state_ptr, out_ptr,
                    stride_qb, stride_qn, stride_qh, stride_qd,
                    stride_ob, stride_on, stride_oh, stride_od,
                    n_tokens, width, num_heads,
                    D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                    INTERPRET_BF16: tl.constexpr, FAST_SINCOS: tl.constexpr):
    """out_n = (R_n Q_n) S / (Q_n . km + eps) for one tile of tokens."""
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    batch = bh // num_heads
    head = bh % num_heads
    q_ptr += batch.to(tl.int64) * stride_qb + head * stride_qh
    out_ptr += batch.to(tl.int64) * stride_ob + head * stride_oh
    dot_dtype = q_ptr.dtype.element_ty
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    tok_mask = offs_n < n_tokens
    offs_d = tl.arange(0, BLOCK_D)

    s_even, s_odd, km_even, km_odd = _load_state(state_ptr + bh.to(tl.int64) * (D * D + D), 1.0 / n_tokens,
                                                 D, BLOCK_D)
    q_even, q_odd = _load_features(q_ptr, offs_n, tok_mask, stride_qn, stride_qd, D, BLOCK_N, BLOCK_D)
    z = 1.0 / (tl.sum(q_even * km_even[None, :] + q_odd * km_odd[None, :], axis=1) + _EPS)
    cos, sin = _rope_cos_sin(offs_n, width, head, num_heads, D, BLOCK_D, FAST_SINCOS)
    qr_even, qr_odd = _rotate(q_even, q_odd, cos, sin)
    qr_even = _mma(qr_even, dot_dtype, INTERPRET_BF16)
    qr_odd = _mma(qr_odd, dot_dtype, INTERPRET_BF16)
    num = tl.dot(qr_even, _mma(s_even, dot_dtype, INTERPRET_BF16), input_precision=PRECISION)
    num = tl.dot(qr_odd, _mma(s_odd, dot_dtype, INTERPRET_BF16), num, input_precision=PRECISION)
    tl.store(out_ptr + offs_n[:, None] * stride_on + offs_d[None, :] * stride_od,
             (num * z[:, None]).to(out_ptr.dtype.element_ty), mask=tok_mask[:, None] & (offs_d[None, :] < D))


@triton.jit(do_not_specialize=['n_tokens', 'width', 'num_heads', 'chunk_tokens'])
def _bwd_state_kernel(q_ptr, do_ptr, state_ptr, dq_ptr, part_ptr,
                      stride_qb, stride_qn, stride_qh, stride_qd,
                      stride_gb, stride_gn, stride_gh, stride_gd,
                      stride_dqb, stride_dqn, stride_dqh, stride_dqd,
                      n_tokens, width, num_heads, chunk_tokens,
                      D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                    INTERPRET_BF16: tl.constexpr, FAST_SINCOS: tl.constexpr):
    """dq for one token chunk, and its partial dS = sum_n (R_n Q_n) g_n^T and dkm = sum_n dden_n Q_n.

    With g_n = z_n do_n (the gradient of the numerator) and dden_n = -z_n (do_n . out_n) (of the denominator):
    dQ_n = R_n^T (S g_n) + dden_n km, then dq = dQ * phi'(q), phi'(q) = min(phi(q), 1).
    """
    chunk = tl.program_id(0)
    bh = tl.program_id(1)
    batch = bh // num_heads
    head = bh % num_heads
    q_ptr += batch.to(tl.int64) * stride_qb + head * stride_qh
    do_ptr += batch.to(tl.int64) * stride_gb + head * stride_gh
    dq_ptr += batch.to(tl.int64) * stride_dqb + head * stride_dqh
    dot_dtype = q_ptr.dtype.element_ty
    offs_d = tl.arange(0, BLOCK_D)

    s_even, s_odd, km_even, km_odd = _load_state(state_ptr + bh.to(tl.int64) * (D * D + D), 1.0 / n_tokens,
                                                 D, BLOCK_D)
    s_even = _mma(s_even, dot_dtype, INTERPRET_BF16)
    s_odd = _mma(s_odd, dot_dtype, INTERPRET_BF16)
    ds_even = tl.zeros((BLOCK_D // 2, BLOCK_D), tl.float32)
    ds_odd = tl.zeros((BLOCK_D // 2, BLOCK_D), tl.float32)
    dkm_even = tl.zeros((BLOCK_D // 2,), tl.float32)
    dkm_odd = tl.zeros((BLOCK_D // 2,), tl.float32)
    start = chunk * chunk_tokens
    end = tl.minimum(start + chunk_tokens, n_tokens)
    for n0 in tl.range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        tok_mask = offs_n < end
        q_even, q_odd = _load_features(q_ptr, offs_n, tok_mask, stride_qn, stride_qd, D, BLOCK_N, BLOCK_D)
        z = 1.0 / (tl.sum(q_even * km_even[None, :] + q_odd * km_odd[None, :], axis=1) + _EPS)
        cos, sin = _rope_cos_sin(offs_n, width, head, num_heads, D, BLOCK_D, FAST_SINCOS)
        qr_even, qr_odd = _rotate(q_even, q_odd, cos, sin)
        qr_even = _mma(qr_even, dot_dtype, INTERPRET_BF16)
        qr_odd = _mma(qr_odd, dot_dtype, INTERPRET_BF16)
        num = tl.dot(qr_even, s_even, input_precision=PRECISION)
        num = tl.dot(qr_odd, s_odd, num, input_precision=PRECISION)
        do = tl.load(do_ptr + offs_n[:, None] * stride_gn + offs_d[None, :] * stride_gd,
                     mask=tok_mask[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
        dden = -z * tl.sum(do * num, axis=1) * z
        g = _mma(do * z[:, None], dot_dtype, INTERPRET_BF16)
        ds_even = tl.dot(tl.trans(qr_even), g, ds_even, input_precision=PRECISION)
        ds_odd = tl.dot(tl.trans(qr_odd), g, ds_odd, input_precision=PRECISION)
        dkm_even += tl.sum(dden[:, None] * q_even, axis=0)
        dkm_odd += tl.sum(dden[:, None] * q_odd, axis=0)
        dq_even, dq_odd = _rotate_back(tl.dot(g, tl.trans(s_even), input_precision=PRECISION),
                                       tl.dot(g, tl.trans(s_odd), input_precision=PRECISION), cos, sin)
        dq_even = (dq_even + dden[:, None] * km_even[None, :]) * tl.minimum(q_even, 1.0)
        dq_odd = (dq_odd + dden[:, None] * km_odd[None, :]) * tl.minimum(q_odd, 1.0)
        _store_pairs(dq_ptr, offs_n, tok_mask, stride_dqn, stride_dqd, dq_even, dq_odd, D, BLOCK_N, BLOCK_D)
    part_ptr += (chunk * tl.num_programs(1) + bh).to(tl.int64) * (D * D + D)
    _store_state(part_ptr, ds_even, ds_odd, dkm_even, dkm_odd, D, BLOCK_D)


@triton.jit(do_not_specialize=['n_tokens', 'width', 'num_heads'])
def _bwd_kv_kernel(k_ptr, v_ptr, dstate_ptr, dk_ptr, dv_ptr,
                   stride_kb, stride_kn, stride_kh, stride_kd,
                   stride_vb, stride_vn, stride_vh, stride_vd,
                   stride_dkb, stride_dkn, stride_dkh, stride_dkd,
                   stride_dvb, stride_dvn, stride_dvh, stride_dvd,
                   n_tokens, width, num_heads,
                   D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                   INTERPRET_BF16: tl.constexpr, FAST_SINCOS: tl.constexpr):
    """dv_n = (R_n K_n)^T dS / N and dk_n = (R_n^T (dS v_n) / N + dkm / N) * phi'(k_n) for one tile of tokens."""
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    batch = bh // num_heads
    head = bh % num_heads
    k_ptr += batch.to(tl.int64) * stride_kb + head * stride_kh
    v_ptr += batch.to(tl.int64) * stride_vb + head * stride_vh
    dk_ptr += batch.to(tl.int64) * stride_dkb + head * stride_dkh
    dv_ptr += batch.to(tl.int64) * stride_dvb + head * stride_dvh
    dot_dtype = v_ptr.dtype.element_ty
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    tok_mask = offs_n < n_tokens
    offs_d = tl.arange(0, BLOCK_D)
    mask = tok_mask[:, None] & (offs_d[None, :] < D)

    ds_even, ds_odd, dkm_even, dkm_odd = _load_state(dstate_ptr + bh.to(tl.int64) * (D * D + D), 1.0 / n_tokens,
                                                     D, BLOCK_D)
    ds_even = _mma(ds_even, dot_dtype, INTERPRET_BF16)
    ds_odd = _mma(ds_odd, dot_dtype, INTERPRET_BF16)
    k_even, k_odd = _load_features(k_ptr, offs_n, tok_mask, stride_kn, stride_kd, D, BLOCK_N, BLOCK_D)
    cos, sin = _rope_cos_sin(offs_n, width, head, num_heads, D, BLOCK_D, FAST_SINCOS)
    kr_even, kr_odd = _rotate(k_even, k_odd, cos, sin)
    v = tl.load(v_ptr + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=mask, other=0.0)
    v = _mma(v, dot_dtype, INTERPRET_BF16)
    dv = tl.dot(_mma(kr_even, dot_dtype, INTERPRET_BF16), ds_even, input_precision=PRECISION)
    dv = tl.dot(_mma(kr_odd, dot_dtype, INTERPRET_BF16), ds_odd, dv, input_precision=PRECISION)
    tl.store(dv_ptr + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
             dv.to(dv_ptr.dtype.element_ty), mask=mask)
    dk_even, dk_odd = _rotate_back(tl.dot(v, tl.trans(ds_even), input_precision=PRECISION),
                                   tl.dot(v, tl.trans(ds_odd), input_precision=PRECISION), cos, sin)
    dk_even = (dk_even + dkm_even[None, :]) * tl.minimum(k_even, 1.0)
    dk_odd = (dk_odd + dkm_odd[None, :]) * tl.minimum(k_odd, 1.0)
    _store_pairs(dk_ptr, offs_n, tok_mask, stride_dkn, stride_dkd, dk_even, dk_odd, D, BLOCK_N, BLOCK_D)


_SM_COUNTS = {}


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 2 under the CPU interpreter (it only sets the chunk count)."""
    if device.type != 'cuda':
        return 2
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


def _config(dim: int, dtype: torch.dtype):
    """(kernel constexprs, reduction tile, apply tile, warps): they depend on the head dim and dtype, never on sizes."""
    interpreted = os.environ.get('TRITON_INTERPRET', '0') == '1'
    block_d = max(32, triton.next_power_of_2(dim))  # tl.dot needs every dim >= 16, and BLOCK_D // 2 is one
    meta = dict(D=dim, BLOCK_D=block_d,
                # fp32 inputs ask for fp32 accuracy (tf32 would miss the fp32 tolerance); at AI ~ D/4 FLOP/B the
                # fp32 dots still fit under the memory roofline. Other dtypes feed the tensor cores natively.
                PRECISION='ieee' if dtype == torch.float32 else 'tf32',
                INTERPRET_BF16=interpreted and dtype == torch.bfloat16,
                # PTX inline assembly does not run in the interpreter (its tl.sin/tl.cos are numpy's).
                FAST_SINCOS=not interpreted)
    return (meta, *_TILES[block_d, dtype.itemsize])


def _chunking(n_tokens: int, programs: int, block_n: int, device: torch.device):
    """(tokens per chunk, chunks) for the reduction kernels: enough programs to fill the device."""
    wanted = triton.cdiv(PROGRAMS_PER_SM * _sm_count(device), programs)
    chunk_tokens = max(triton.cdiv(triton.cdiv(n_tokens, wanted), block_n) * block_n, MIN_CHUNK)
    return chunk_tokens, triton.cdiv(n_tokens, chunk_tokens)


def _reduce(partials: torch.Tensor) -> torch.Tensor:
    return partials[0] if partials.shape[0] == 1 else partials.sum(0)


def _forward(q, k, v, width):
    batch, n_tokens, heads, dim = q.shape
    meta, reduce_n, apply_n, warps = _config(dim, q.dtype)
    chunk_tokens, chunks = _chunking(n_tokens, batch * heads, reduce_n, q.device)
    partials = torch.empty(chunks, batch * heads, dim * dim + dim, device=q.device, dtype=torch.float32)
    _fwd_state_kernel[(chunks, batch * heads)](
        k, v, partials, *k.stride(), *v.stride(), n_tokens, width, heads, chunk_tokens,
        BLOCK_N=reduce_n, num_warps=warps, num_stages=NUM_STAGES, **meta)
    state = _reduce(partials)
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    _fwd_out_kernel[(triton.cdiv(n_tokens, apply_n), batch * heads)](
        q, state, out, *q.stride(), *out.stride(), n_tokens, width, heads,
        BLOCK_N=apply_n, num_warps=warps, **meta)
    return out, state


def _backward(q, k, v, state, grad_out, width):
    batch, n_tokens, heads, dim = q.shape
    meta, reduce_n, apply_n, warps = _config(dim, q.dtype)
    chunk_tokens, chunks = _chunking(n_tokens, batch * heads, reduce_n, q.device)
    partials = torch.empty(chunks, batch * heads, dim * dim + dim, device=q.device, dtype=torch.float32)
    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    _bwd_state_kernel[(chunks, batch * heads)](
        q, grad_out, state, dq, partials, *q.stride(), *grad_out.stride(), *dq.stride(),
        n_tokens, width, heads, chunk_tokens,
        BLOCK_N=reduce_n, num_warps=warps, num_stages=NUM_STAGES, **meta)
    dstate = _reduce(partials)
    dk = torch.empty(k.shape, device=k.device, dtype=k.dtype)
    dv = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    _bwd_kv_kernel[(triton.cdiv(n_tokens, apply_n), batch * heads)](
        k, v, dstate, dk, dv, *k.stride(), *v.stride(), *dk.stride(), *dv.stride(), n_tokens, width, heads,
        BLOCK_N=apply_n, num_warps=warps, **meta)
    return dq, dk, dv


class LinearAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, width):
        out, state = _forward(q, k, v, width)
        ctx.save_for_backward(q, k, v, state)
        ctx.width = width
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # the backward kernels have no derivative of their own
    def backward(ctx, grad_out):
        q, k, v, state = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, state, grad_out, ctx.width)
        return dq, dk, dv, None


def linear_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw) -> torch.Tensor:
    """The fused kernel; same signature and result as ``linear_attention_reference``.

    Args:
        q, k: [B, N, H, D] before the ELU+1 feature map, any strides; v: [B, N, H, D]; hw = (height, width).
        D must be even (RoPE pairs must not straddle heads) and at most 128.
    Returns:
        [B, N, H, D], contiguous, in the input dtype.
    """
    check_inputs(q, k, v, hw)
    dim = q.shape[-1]
    if dim % 2 or dim > MAX_HEAD_DIM:
        raise ValueError(f'linear_attention_triton: head dim D={dim} (q shape {tuple(q.shape)}) is not supported; '
                         f'it must be even and <= {MAX_HEAD_DIM} (use backend="torch")')
    if q.numel() == 0:
        return torch.empty(q.shape, device=q.device, dtype=q.dtype)
    return LinearAttentionFunction.apply(q, k, v, int(hw[1]))
