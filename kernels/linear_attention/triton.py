"""Triton forward and backward of the generalised non-causal linear attention; the math is in ``reference.py``.

Notation per (batch b, value head h), tokens n of an H x W grid; Q, K = phi(q), phi(k) (the head's own or the shared
query / key), Q~, K~ their RoPE rotations (or Q, K without RoPE), u_n = s_n * v_n (the gated value, or v_n), and
sigma = 1/N for the 'denominator' and 'mean' normalisers, 1 for 'none':
    state  S = sum_n K~_n u_n^T (Dk x Dv) and ksum = sum_n K_n (Dk), one fp32 record of Dk*Dv + Dk floats per (b, h)
    out_n  = c_n Q~_n (sigma S) + D * v_n + LePE(v)_n,   c_n = 1 / (Q_n . sigma ksum + eps) ('denominator') or 1

Kernels (grid axis 0 is (batch, head), so the programs of one token tile run together and the tile's full qk / v
rows are read once from HBM even when the heads share one query / key):
    forward   _fwd_state_kernel  (B*H, chunks): k, v[, gate] of a token chunk -> partial state; the last chunk of each
                                 (b, h) to finish sums the partials in a fixed order into the state (deterministic).
              _fwd_out_kernel    (B*H, tiles):  q[, v] -> out, with D * v and the 3x3 LePE taps of v (the
                                 neighbouring rows come from L1 / L2) fused in
    backward  _bwd_state_kernel  (B*H, chunks): q, do -> partial (dS, dksum), reduced the same way; dq (per-head q/k)
              _bwd_kv_kernel     (B*H or B, tiles): k, v[, gate, do] -> dk, dv[, dgate] and per-tile parts of the
                                 parameter gradients (D, LePE weight and bias); with a shared query / key one program
                                 loops over the heads, so dq and dk (sums over the heads) are written once.
Launches: 2 forward; 2 backward, plus one torch sum of the parameter parts when there is a D or a LePE (and a [C]
copy when there are two such parameters: custom-op outputs may not share storage). MLLA's mixer was 6 launches
forward (projection, 2 kernels, a torch.sum of partials, LePE conv, add) and is 3 (projection, 2 kernels).
The chunked reductions fill the GPU at batch 1; only qk, v[, gate, D, LePE] (the caller's tensors) and the fp32 state
are saved for backward: phi, RoPE, z and out are recomputed.

Inside a kernel a [tokens, Dk] tile is loaded with its native strides and split into its even and odd channels, the
two halves of each RoPE pair: the rotation is then elementwise, and the Dk x Dv products are taken per half
(Q~ S = Q~_even S[even rows] + Q~_odd S[odd rows]), so no tile is re-interleaved except for dq and dk.
Sizes (N, width, heads, chunking) are runtime arguments excluded from specialization: one compiled kernel per
(dtype, head dims, options) serves every image size.
"""
import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from . import NORMS
from .reference import EPS, ROPE_BASE

_EPS = tl.constexpr(EPS)
_NEG_LOG2_BASE = tl.constexpr(-math.log2(ROPE_BASE))
_INV_2PI = tl.constexpr(1.0 / (2.0 * math.pi))
# 2*pi split in two (Cody-Waite): k * _2PI_HI is exact in fp32 for k < 2**16, i.e. angles up to ~4e5 rad.
_2PI_HI = tl.constexpr(6.28125)
_2PI_LO = tl.constexpr(2.0 * math.pi - 6.28125)

# Launch shape. The reduction kernels loop over tiles of tokens (software-pipelined in NUM_STAGES stages) across a
# chunk of at least MIN_CHUNK tokens, so that each partial state (4 KiB at Dk = Dv = 32) is amortised over >= 64 KiB
# of reads; chunks are added until about PROGRAMS_PER_SM programs per SM are running.
MAX_HEAD_DIM = 128
MIN_CHUNK = 512
PROGRAMS_PER_SM = 4
NUM_STAGES = 3
REDUCE_BLOCK = 1024  # floats of a state record summed per step by the last program of a (b, h) ...
_REDUCE_CHUNKS = tl.constexpr(8)  # ... over this many chunks at once
PARAM_SLOTS = 11  # per-tile parameter-gradient parts of _bwd_kv_kernel: D, the 9 LePE taps, the LePE bias
# (reduction tile, apply tile, warps) by (max(BLOCK_DK, BLOCK_DV), element size): the largest tiles with which the
# MLLA kernels did not spill registers on sm_90 (ptxas, D = 16..128; only fp32 at D = 128 spills, 100-300 bytes).
_TILES = {(32, 2): (64, 128, 4), (64, 2): (64, 64, 8), (128, 2): (32, 32, 8),
          (32, 4): (32, 64, 8), (64, 4): (16, 32, 8), (128, 4): (16, 16, 8)}


# ---------------------------------------------------------------------------------------------------------------
# Tile helpers

@triton.jit
def _load_features(ptr, offs_n, tok_mask, stride_n, stride_d, D: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, FEATURE_ELU: tl.constexpr):
    """phi(x) of a [BLOCK_N, D] tile as its (even, odd) channel halves, fp32, zero outside the tile."""
    offs_d = tl.arange(0, BLOCK_D)
    mask = tok_mask[:, None] & (offs_d[None, :] < D)
    x = tl.load(ptr + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d, mask=mask, other=0.0)
    x = x.to(tl.float32)
    if FEATURE_ELU:
        # ELU(x) + 1 = x + 1 for x > 0, exp(x) otherwise; padding must give 0, not phi(0) = 1.
        x = tl.where(mask, tl.where(x > 0, x + 1.0, tl.exp(x)), 0.0)
    return tl.split(tl.reshape(x, (BLOCK_N, BLOCK_D // 2, 2)))


@triton.jit
def _feature_grad(phi, FEATURE_ELU: tl.constexpr):
    """d phi / dx expressed through phi: min(phi, 1) for ELU + 1 (phi = exp(x) below 0), 1 for the identity."""
    if FEATURE_ELU:
        slope = tl.minimum(phi, 1.0)
    else:
        slope = tl.full(phi.shape, 1.0, tl.float32)
    return slope


@triton.jit
def _load_tile(ptr, offs_n, tok_mask, stride_n, stride_d, D: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    return tl.load(ptr + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d,
                   mask=tok_mask[:, None] & (offs_d[None, :] < D), other=0.0)


@triton.jit
def _store_tile(ptr, x, offs_n, tok_mask, stride_n, stride_d, D: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    tl.store(ptr + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d, x.to(ptr.dtype.element_ty),
             mask=tok_mask[:, None] & (offs_d[None, :] < D))


@triton.jit
def _store_pairs(ptr, offs_n, tok_mask, stride_n, stride_d, even, odd, D: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    """Re-interleave (even, odd) channel halves into a [BLOCK_N, D] tile and store it in the pointer's dtype."""
    _store_tile(ptr, tl.reshape(tl.join(even, odd), (BLOCK_N, BLOCK_D)), offs_n, tok_mask, stride_n, stride_d,
                D, BLOCK_D)


@triton.jit
def _load_gate(ptr, offs_n, tok_mask, stride_n, stride_d, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
               GATE: tl.constexpr):
    """The value gate of a tile in fp32: [BLOCK_N, 1] per head (GATE 1), [BLOCK_N, BLOCK_DV] per channel (GATE 2)."""
    if GATE == 1:
        gate = tl.load(ptr + offs_n * stride_n, mask=tok_mask, other=0.0).to(tl.float32)[:, None]
    else:
        gate = _load_tile(ptr, offs_n, tok_mask, stride_n, stride_d, DV, BLOCK_DV).to(tl.float32)
    return gate


@triton.jit
def _rope_cos_sin(offs_n, width, qk_head, qk_channels, DK: tl.constexpr, BLOCK_DK: tl.constexpr,
                  ROPE: tl.constexpr, FAST_SINCOS: tl.constexpr):
    """cos, sin [BLOCK_N, BLOCK_DK // 2] of the RoPE angles of this query/key head's channel pairs at tokens offs_n
    (unused scalars without RoPE).

    Pair p (numbered over all qk_channels = Hk * Dk channels, as the reference does) turns by row * theta_p for
    p < C/4 and by col * theta_(p - C/4) otherwise, theta_j = 10000^(-j / (C/4)).
    """
    if ROPE:
        quarter = qk_channels // 4
        pair = qk_head * (DK // 2) + tl.arange(0, BLOCK_DK // 2)
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
            cos = tl.inline_asm_elementwise('cos.approx.f32 $0, $1;', '=f,f', [angle], dtype=tl.float32,
                                            is_pure=True, pack=1)
            sin = tl.inline_asm_elementwise('sin.approx.f32 $0, $1;', '=f,f', [angle], dtype=tl.float32,
                                            is_pure=True, pack=1)
        else:
            cos = tl.cos(angle)
            sin = tl.sin(angle)
    else:
        cos = 1.0
        sin = 0.0
    return cos, sin


@triton.jit
def _rotate(even, odd, cos, sin, ROPE: tl.constexpr):
    if ROPE:
        r_even = even * cos - odd * sin
        r_odd = even * sin + odd * cos
    else:
        r_even = even
        r_odd = odd
    return r_even, r_odd


@triton.jit
def _rotate_back(even, odd, cos, sin, ROPE: tl.constexpr):
    """The transposed (inverse) rotation, for gradients."""
    if ROPE:
        r_even = even * cos + odd * sin
        r_odd = odd * cos - even * sin
    else:
        r_even = even
        r_odd = odd
    return r_even, r_odd


@triton.jit
def _mma(x, dtype: tl.constexpr):
    """x as a tl.dot operand of ``dtype``."""
    return x.to(dtype)


@triton.jit
def _smma(x, dot_dtype: tl.constexpr, STATE_F32: tl.constexpr):
    """x as an operand of a product with a state: in the input dtype, or in fp32 (tf32 tensor cores) where the
    input dtype is not enough for the un-normalised state (STATE_F32, see _state_f32)."""
    if STATE_F32:
        y = x.to(tl.float32)
    else:
        y = _mma(x, dot_dtype)
    return y


@triton.jit
def _sigma(n_tokens, NORM: tl.constexpr):
    """The scale the state is used with: 1/N with a normaliser ('denominator', 'mean'), 1 without ('none')."""
    if NORM == 2:
        scale = 1.0
    else:
        scale = 1.0 / n_tokens
    return scale


@triton.jit
def _load_shortcut(ptr, head, DV: tl.constexpr, BLOCK_DV: tl.constexpr, SHORTCUT: tl.constexpr):
    """D of one head as a [BLOCK_DV] fp32 vector: one value per head (SHORTCUT 1) or per channel (SHORTCUT 2)."""
    offs_e = tl.arange(0, BLOCK_DV)
    if SHORTCUT == 1:
        d = tl.load(ptr + head + offs_e * 0).to(tl.float32)
    else:
        d = tl.load(ptr + head * DV + offs_e, mask=offs_e < DV, other=0.0).to(tl.float32)
    return d


@triton.jit
def _load_state(ptr, scale, DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr):
    """A [Dk x Dv matrix, Dk vector] record, times scale, as (mat[even rows], mat[odd rows], vec[even], vec[odd])."""
    offs_j = tl.arange(0, BLOCK_DK // 2)
    offs_e = tl.arange(0, BLOCK_DV)
    pair_mask = offs_j < DK // 2
    mask = pair_mask[:, None] & (offs_e[None, :] < DV)
    rows = ptr + (2 * offs_j)[:, None] * DV + offs_e[None, :]
    mat_even = tl.load(rows, mask=mask, other=0.0) * scale
    mat_odd = tl.load(rows + DV, mask=mask, other=0.0) * scale
    vec_even = tl.load(ptr + DK * DV + 2 * offs_j, mask=pair_mask, other=0.0) * scale
    vec_odd = tl.load(ptr + DK * DV + 2 * offs_j + 1, mask=pair_mask, other=0.0) * scale
    return mat_even, mat_odd, vec_even, vec_odd


@triton.jit
def _store_state(ptr, mat_even, mat_odd, vec_even, vec_odd, DK: tl.constexpr, DV: tl.constexpr,
                 BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr):
    offs_j = tl.arange(0, BLOCK_DK // 2)
    offs_e = tl.arange(0, BLOCK_DV)
    pair_mask = offs_j < DK // 2
    mask = pair_mask[:, None] & (offs_e[None, :] < DV)
    rows = ptr + (2 * offs_j)[:, None] * DV + offs_e[None, :]
    tl.store(rows, mat_even, mask=mask)
    tl.store(rows + DV, mat_odd, mask=mask)
    tl.store(ptr + DK * DV + 2 * offs_j, vec_even, mask=pair_mask)
    tl.store(ptr + DK * DV + 2 * offs_j + 1, vec_odd, mask=pair_mask)


@triton.jit
def _store_or_reduce(part_ptr, state_ptr, count_ptr, bh, chunk, n_chunks, mat_even, mat_odd, vec_even, vec_odd,
                     DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                     BLOCK_R: tl.constexpr):
    """Store this chunk's record; the last chunk of (b, h) to arrive sums all of them, in a fixed order, into the
    state.

    The per-(b, h) arrival counter is left at zero for the next launch (it lives in a buffer cached per device).
    """
    record = DK * DV + DK
    if n_chunks == 1:
        _store_state(state_ptr + bh.to(tl.int64) * record, mat_even, mat_odd, vec_even, vec_odd,
                     DK, DV, BLOCK_DK, BLOCK_DV)
    else:
        num_bh = tl.num_programs(0)
        _store_state(part_ptr + (chunk * num_bh + bh).to(tl.int64) * record, mat_even, mat_odd, vec_even, vec_odd,
                     DK, DV, BLOCK_DK, BLOCK_DV)
        # Every thread's stores precede the release of the arrival; the acquire orders the last program's reads.
        tl.debug_barrier()
        arrived = tl.atomic_add(count_ptr + bh, 1, sem='acq_rel')
        if arrived == n_chunks - 1:
            # [_REDUCE_CHUNKS, BLOCK_R] tiles: many chunks' loads in flight at once (one program reads every partial
            # of its (b, h); a chunk at a time would wait out the L2 latency chunks * record / BLOCK_R times). The
            # summation order is fixed by the code, so the result is the same on every run.
            for start in tl.range(0, record, BLOCK_R):
                offs = start + tl.arange(0, BLOCK_R)
                mask = offs < record
                total = tl.zeros((BLOCK_R,), tl.float32)
                for c0 in tl.range(0, n_chunks, _REDUCE_CHUNKS):
                    chunks = c0 + tl.arange(0, _REDUCE_CHUNKS)
                    # .cg: read at L2, where the other programs' partials are, never a stale L1 line.
                    parts = tl.load(part_ptr + (chunks[:, None] * num_bh + bh).to(tl.int64) * record + offs[None, :],
                                    mask=(chunks[:, None] < n_chunks) & mask[None, :], other=0.0,
                                    cache_modifier='.cg')
                    total += tl.sum(parts, axis=0)
                tl.store(state_ptr + bh.to(tl.int64) * record + offs, total, mask=mask)
            tl.atomic_xchg(count_ptr + bh, 0)


# ---------------------------------------------------------------------------------------------------------------
# Kernels

@triton.jit(do_not_specialize=['n_tokens', 'width', 'num_heads', 'qk_heads', 'chunk_tokens', 'n_chunks'])
def _fwd_state_kernel(k_ptr, v_ptr, gate_ptr, part_ptr, state_ptr, count_ptr,
                      stride_kb, stride_kn, stride_kh, stride_kd,
                      stride_vb, stride_vn, stride_vh, stride_vd,
                      stride_sb, stride_sn, stride_sh, stride_sd,
                      n_tokens, width, num_heads, qk_heads, chunk_tokens, n_chunks,
                      DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, FEATURE_ELU: tl.constexpr, ROPE: tl.constexpr,
                      NORM: tl.constexpr, GATE: tl.constexpr, PRECISION: tl.constexpr,
                      FAST_SINCOS: tl.constexpr):
    """State of one token chunk: sum_n K~_n u_n^T and sum_n K_n (not yet divided by N)."""
    bh = tl.program_id(0)
    chunk = tl.program_id(1)
    batch = bh // num_heads
    head = bh % num_heads
    qk_head = head % qk_heads
    k_ptr += batch.to(tl.int64) * stride_kb + qk_head * stride_kh
    v_ptr += batch.to(tl.int64) * stride_vb + head * stride_vh
    gate_ptr += batch.to(tl.int64) * stride_sb + head * stride_sh
    dot_dtype = v_ptr.dtype.element_ty

    kv_even = tl.zeros((BLOCK_DK // 2, BLOCK_DV), tl.float32)
    kv_odd = tl.zeros((BLOCK_DK // 2, BLOCK_DV), tl.float32)
    ksum_even = tl.zeros((BLOCK_DK // 2,), tl.float32)
    ksum_odd = tl.zeros((BLOCK_DK // 2,), tl.float32)
    start = chunk * chunk_tokens
    end = tl.minimum(start + chunk_tokens, n_tokens)
    for n0 in tl.range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        tok_mask = offs_n < end
        k_even, k_odd = _load_features(k_ptr, offs_n, tok_mask, stride_kn, stride_kd, DK, BLOCK_N, BLOCK_DK,
                                       FEATURE_ELU)
        cos, sin = _rope_cos_sin(offs_n, width, qk_head, qk_heads * DK, DK, BLOCK_DK, ROPE, FAST_SINCOS)
        kr_even, kr_odd = _rotate(k_even, k_odd, cos, sin, ROPE)
        u = _load_tile(v_ptr, offs_n, tok_mask, stride_vn, stride_vd, DV, BLOCK_DV)
        if GATE != 0:
            u = u.to(tl.float32) * _load_gate(gate_ptr, offs_n, tok_mask, stride_sn, stride_sd, DV, BLOCK_DV, GATE)
        u = _mma(u, dot_dtype)
        kv_even = tl.dot(tl.trans(_mma(kr_even, dot_dtype)), u, kv_even, input_precision=PRECISION)
        kv_odd = tl.dot(tl.trans(_mma(kr_odd, dot_dtype)), u, kv_odd, input_precision=PRECISION)
        if NORM == 0:
            ksum_even += tl.sum(k_even, axis=0)
            ksum_odd += tl.sum(k_odd, axis=0)
    _store_or_reduce(part_ptr, state_ptr, count_ptr, bh, chunk, n_chunks, kv_even, kv_odd, ksum_even, ksum_odd,
                     DK, DV, BLOCK_DK, BLOCK_DV, BLOCK_R)


@triton.jit
def _lepe_taps(x_ptr, w_ptr, channel0, offs_n, tok_mask, width, n_tokens, stride_n, stride_d, DV: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr, TRANSPOSED: tl.constexpr):
    """sum_t w_t * x[n + o_t] over the 3x3 taps o_t = (di, dj) of a depthwise conv with zero padding (TRANSPOSED:
    x[n - o_t], the conv's input gradient), for one head's [BLOCK_N, Dv] tile; w [C, 1, 3, 3], channels from
    channel0. The shifted tiles overlap this program's and its neighbours' rows: they come from L1 / L2."""
    offs_e = tl.arange(0, BLOCK_DV)
    e_mask = offs_e < DV
    row = offs_n // width
    col = offs_n % width
    height = n_tokens // width
    total = tl.zeros((BLOCK_N, BLOCK_DV), tl.float32)
    for tap in tl.static_range(9):
        di = tap // 3 - 1
        dj = tap % 3 - 1
        if TRANSPOSED:
            di = -di
            dj = -dj
        inside = tok_mask & (row + di >= 0) & (row + di < height) & (col + dj >= 0) & (col + dj < width)
        x = tl.load(x_ptr + (offs_n + di * width + dj)[:, None] * stride_n + offs_e[None, :] * stride_d,
                    mask=inside[:, None] & e_mask[None, :], other=0.0).to(tl.float32)
        w = tl.load(w_ptr + (channel0 + offs_e) * 9 + tap, mask=e_mask, other=0.0).to(tl.float32)
        total += x * w[None, :]
    return total


@triton.jit(do_not_specialize=['n_tokens', 'width', 'num_heads', 'qk_heads'])
def _fwd_out_kernel(q_ptr, v_ptr, state_ptr, shortcut_ptr, lepe_w_ptr, lepe_b_ptr, out_ptr,
                    stride_qb, stride_qn, stride_qh, stride_qd,
                    stride_vb, stride_vn, stride_vh, stride_vd,
                    stride_ob, stride_on, stride_oh, stride_od,
                    n_tokens, width, num_heads, qk_heads,
                    DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                    BLOCK_N: tl.constexpr, FEATURE_ELU: tl.constexpr, ROPE: tl.constexpr, NORM: tl.constexpr,
                    SHORTCUT: tl.constexpr, LEPE: tl.constexpr, STATE_F32: tl.constexpr, PRECISION: tl.constexpr,
                    FAST_SINCOS: tl.constexpr):
    """out_n = c_n Q~_n (sigma S) [+ D * v_n] [+ LePE(v)_n] for one tile of tokens."""
    bh = tl.program_id(0)
    tile = tl.program_id(1)
    batch = bh // num_heads
    head = bh % num_heads
    qk_head = head % qk_heads
    q_ptr += batch.to(tl.int64) * stride_qb + qk_head * stride_qh
    v_ptr += batch.to(tl.int64) * stride_vb + head * stride_vh
    out_ptr += batch.to(tl.int64) * stride_ob + head * stride_oh
    dot_dtype = v_ptr.dtype.element_ty
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    tok_mask = offs_n < n_tokens

    sigma = _sigma(n_tokens, NORM)
    s_even, s_odd, km_even, km_odd = _load_state(state_ptr + bh.to(tl.int64) * (DK * DV + DK), sigma,
                                                 DK, DV, BLOCK_DK, BLOCK_DV)
    q_even, q_odd = _load_features(q_ptr, offs_n, tok_mask, stride_qn, stride_qd, DK, BLOCK_N, BLOCK_DK,
                                   FEATURE_ELU)
    cos, sin = _rope_cos_sin(offs_n, width, qk_head, qk_heads * DK, DK, BLOCK_DK, ROPE, FAST_SINCOS)
    qr_even, qr_odd = _rotate(q_even, q_odd, cos, sin, ROPE)
    qr_even = _smma(qr_even, dot_dtype, STATE_F32)
    qr_odd = _smma(qr_odd, dot_dtype, STATE_F32)
    out = tl.dot(qr_even, _smma(s_even, dot_dtype, STATE_F32), input_precision=PRECISION)
    out = tl.dot(qr_odd, _smma(s_odd, dot_dtype, STATE_F32), out, input_precision=PRECISION)
    if NORM == 0:
        z = 1.0 / (tl.sum(q_even * km_even[None, :] + q_odd * km_odd[None, :], axis=1) + _EPS)
        out = out * z[:, None]
    if SHORTCUT != 0:
        v = _load_tile(v_ptr, offs_n, tok_mask, stride_vn, stride_vd, DV, BLOCK_DV).to(tl.float32)
        out += v * _load_shortcut(shortcut_ptr, head, DV, BLOCK_DV, SHORTCUT)[None, :]
    if LEPE != 0:
        out += _lepe_taps(v_ptr, lepe_w_ptr, head * DV, offs_n, tok_mask, width, n_tokens, stride_vn, stride_vd,
                          DV, BLOCK_N, BLOCK_DV, False)
        if LEPE == 2:
            offs_e = tl.arange(0, BLOCK_DV)
            out += tl.load(lepe_b_ptr + head * DV + offs_e, mask=offs_e < DV, other=0.0).to(tl.float32)[None, :]
    _store_tile(out_ptr, out, offs_n, tok_mask, stride_on, stride_od, DV, BLOCK_DV)


@triton.jit
def _q_grad(q_even, q_odd, qr_even, qr_odd, g, s_even, s_odd, km_even, km_odd, dot_dtype: tl.constexpr,
            STATE_F32: tl.constexpr, NORM: tl.constexpr, PRECISION: tl.constexpr):
    """For one head: gc = c * g (the gradient of Q~ (sigma S)), dQ~ = gc (sigma S)^T as (even, odd) halves, and
    dden = d loss / d(Q . sigma ksum) (zero without the 'denominator' normaliser)."""
    if NORM == 0:
        z = 1.0 / (tl.sum(q_even * km_even[None, :] + q_odd * km_odd[None, :], axis=1) + _EPS)
        num = tl.dot(_smma(qr_even, dot_dtype, STATE_F32), s_even, input_precision=PRECISION)
        num = tl.dot(_smma(qr_odd, dot_dtype, STATE_F32), s_odd, num, input_precision=PRECISION)
        dden = -z * tl.sum(g * num, axis=1) * z
        gc = g * z[:, None]
    else:
        dden = tl.zeros((g.shape[0],), tl.float32)
        gc = g
    gc = _smma(gc, dot_dtype, STATE_F32)
    dqr_even = tl.dot(gc, tl.trans(s_even), input_precision=PRECISION)
    dqr_odd = tl.dot(gc, tl.trans(s_odd), input_precision=PRECISION)
    return gc, dqr_even, dqr_odd, dden


@triton.jit(do_not_specialize=['n_tokens', 'width', 'num_heads', 'qk_heads', 'chunk_tokens', 'n_chunks'])
def _bwd_state_kernel(q_ptr, do_ptr, state_ptr, dq_ptr, part_ptr, dstate_ptr, count_ptr,
                      stride_qb, stride_qn, stride_qh, stride_qd,
                      stride_gb, stride_gn, stride_gh, stride_gd,
                      stride_dqb, stride_dqn, stride_dqh, stride_dqd,
                      n_tokens, width, num_heads, qk_heads, chunk_tokens, n_chunks,
                      DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, FEATURE_ELU: tl.constexpr, ROPE: tl.constexpr,
                      NORM: tl.constexpr, STATE_F32: tl.constexpr, WRITE_DQ: tl.constexpr,
                      PRECISION: tl.constexpr, FAST_SINCOS: tl.constexpr):
    """Partial dS = sum_n Q~_n gc_n^T and dksum = sum_n dden_n Q_n of one token chunk (reduced into dstate), and,
    with a per-head query (WRITE_DQ), dq = (R^T dQ~ + dden sigma ksum) * phi'(q)."""
    bh = tl.program_id(0)
    chunk = tl.program_id(1)
    batch = bh // num_heads
    head = bh % num_heads
    qk_head = head % qk_heads
    q_ptr += batch.to(tl.int64) * stride_qb + qk_head * stride_qh
    do_ptr += batch.to(tl.int64) * stride_gb + head * stride_gh
    dq_ptr += batch.to(tl.int64) * stride_dqb + qk_head * stride_dqh
    dot_dtype = do_ptr.dtype.element_ty

    sigma = _sigma(n_tokens, NORM)
    s_even, s_odd, km_even, km_odd = _load_state(state_ptr + bh.to(tl.int64) * (DK * DV + DK), sigma,
                                                 DK, DV, BLOCK_DK, BLOCK_DV)
    s_even = _smma(s_even, dot_dtype, STATE_F32)
    s_odd = _smma(s_odd, dot_dtype, STATE_F32)
    ds_even = tl.zeros((BLOCK_DK // 2, BLOCK_DV), tl.float32)
    ds_odd = tl.zeros((BLOCK_DK // 2, BLOCK_DV), tl.float32)
    dkm_even = tl.zeros((BLOCK_DK // 2,), tl.float32)
    dkm_odd = tl.zeros((BLOCK_DK // 2,), tl.float32)
    start = chunk * chunk_tokens
    end = tl.minimum(start + chunk_tokens, n_tokens)
    for n0 in tl.range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        tok_mask = offs_n < end
        q_even, q_odd = _load_features(q_ptr, offs_n, tok_mask, stride_qn, stride_qd, DK, BLOCK_N, BLOCK_DK,
                                       FEATURE_ELU)
        cos, sin = _rope_cos_sin(offs_n, width, qk_head, qk_heads * DK, DK, BLOCK_DK, ROPE, FAST_SINCOS)
        qr_even, qr_odd = _rotate(q_even, q_odd, cos, sin, ROPE)
        g = _load_tile(do_ptr, offs_n, tok_mask, stride_gn, stride_gd, DV, BLOCK_DV).to(tl.float32)
        gc, dqr_even, dqr_odd, dden = _q_grad(q_even, q_odd, qr_even, qr_odd, g, s_even, s_odd, km_even, km_odd,
                                              dot_dtype, STATE_F32, NORM, PRECISION)
        ds_even = tl.dot(tl.trans(_smma(qr_even, dot_dtype, STATE_F32)), gc, ds_even,
                         input_precision=PRECISION)
        ds_odd = tl.dot(tl.trans(_smma(qr_odd, dot_dtype, STATE_F32)), gc, ds_odd,
                        input_precision=PRECISION)
        if NORM == 0:
            dkm_even += tl.sum(dden[:, None] * q_even, axis=0)
            dkm_odd += tl.sum(dden[:, None] * q_odd, axis=0)
        if WRITE_DQ:
            dq_even, dq_odd = _rotate_back(dqr_even, dqr_odd, cos, sin, ROPE)
            if NORM == 0:
                dq_even += dden[:, None] * km_even[None, :]
                dq_odd += dden[:, None] * km_odd[None, :]
            dq_even = dq_even * _feature_grad(q_even, FEATURE_ELU)
            dq_odd = dq_odd * _feature_grad(q_odd, FEATURE_ELU)
            _store_pairs(dq_ptr, offs_n, tok_mask, stride_dqn, stride_dqd, dq_even, dq_odd, DK, BLOCK_N, BLOCK_DK)
    _store_or_reduce(part_ptr, dstate_ptr, count_ptr, bh, chunk, n_chunks, ds_even, ds_odd, dkm_even, dkm_odd,
                     DK, DV, BLOCK_DK, BLOCK_DV, BLOCK_R)


@triton.jit
def _bwd_kv_head(head, batch, tile, offs_n, tok_mask, kr_even, kr_odd, q_even, q_odd, qr_even, qr_odd,
                 dkr_even, dkr_odd, dkm_even, dkm_odd, dqr_sum_even, dqr_sum_odd, dden_sum, km_even, km_odd, sigma,
                 v_ptr, gate_ptr, do_ptr, shortcut_ptr, lepe_w_ptr, state_ptr, dstate_ptr, dv_ptr, dgate_ptr,
                 dparam_ptr, width, n_tokens,
                 stride_vb, stride_vn, stride_vh, stride_vd, stride_sb, stride_sn, stride_sh, stride_sd,
                 stride_gb, stride_gn, stride_gh, stride_gd, stride_dvb, stride_dvn, stride_dvh, stride_dvd,
                 stride_dsb, stride_dsn, stride_dsh, stride_dsd, num_heads, num_bh,
                 DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                 BLOCK_N: tl.constexpr, NORM: tl.constexpr, GATE: tl.constexpr, SHORTCUT: tl.constexpr,
                 LEPE: tl.constexpr, PARAM_SLOTS: tl.constexpr, STATE_F32: tl.constexpr, WRITE_DQ: tl.constexpr,
                 LOAD_DO: tl.constexpr, PRECISION: tl.constexpr):
    """The contributions of one value head to _bwd_kv_kernel's tile: stores dv[, dgate, dD part] and returns the
    updated sums over heads (dK~, sigma dksum[, dQ~, dden])."""
    dot_dtype = v_ptr.dtype.element_ty
    bh = (batch * num_heads + head).to(tl.int64)
    ds_even, ds_odd, dksum_even, dksum_odd = _load_state(dstate_ptr + bh * (DK * DV + DK), sigma,
                                                         DK, DV, BLOCK_DK, BLOCK_DV)
    ds_even = _smma(ds_even, dot_dtype, STATE_F32)
    ds_odd = _smma(ds_odd, dot_dtype, STATE_F32)
    dkm_even += dksum_even
    dkm_odd += dksum_odd
    v_head = v_ptr + batch.to(tl.int64) * stride_vb + head * stride_vh
    v = _load_tile(v_head, offs_n, tok_mask, stride_vn, stride_vd, DV, BLOCK_DV)
    u = v
    if GATE != 0:
        gate = _load_gate(gate_ptr + batch.to(tl.int64) * stride_sb + head * stride_sh, offs_n, tok_mask,
                          stride_sn, stride_sd, DV, BLOCK_DV, GATE)
        u = v.to(tl.float32) * gate
    u = _smma(u, dot_dtype, STATE_F32)
    du = tl.dot(kr_even, ds_even, input_precision=PRECISION)
    du = tl.dot(kr_odd, ds_odd, du, input_precision=PRECISION)
    dkr_even = tl.dot(u, tl.trans(ds_even), dkr_even, input_precision=PRECISION)
    dkr_odd = tl.dot(u, tl.trans(ds_odd), dkr_odd, input_precision=PRECISION)
    dv = du
    if GATE != 0:
        dv = du * gate
        dgate_head = dgate_ptr + batch.to(tl.int64) * stride_dsb + head * stride_dsh
        if GATE == 1:
            dgate = tl.sum(du * v.to(tl.float32), axis=1)
            tl.store(dgate_head + offs_n * stride_dsn, dgate.to(dgate_ptr.dtype.element_ty), mask=tok_mask)
        else:
            _store_tile(dgate_head, du * v.to(tl.float32), offs_n, tok_mask, stride_dsn, stride_dsd,
                        DV, BLOCK_DV)
    if LOAD_DO:
        g = _load_tile(do_ptr + batch.to(tl.int64) * stride_gb + head * stride_gh, offs_n, tok_mask,
                       stride_gn, stride_gd, DV, BLOCK_DV).to(tl.float32)
    # This tile's parts of the parameter gradients, [tiles, B, PARAM_SLOTS, H * Dv], summed over (tile, b) by the
    # launcher: slot 0 dD = sum_n do_n * v_n, slots 1-9 the LePE taps sum_n do_n * v_(n + o_t), slot 10 its bias
    # sum_n do_n. Slot-major over the channels, so the sums are the parameters' own layouts (the taps transposed).
    offs_e = tl.arange(0, BLOCK_DV)
    e_mask = offs_e < DV
    slot = num_heads * DV
    param_part = dparam_ptr + ((tile * (num_bh // num_heads) + batch).to(tl.int64) * PARAM_SLOTS * slot
                               + head * DV + offs_e)
    if SHORTCUT != 0:
        dv += g * _load_shortcut(shortcut_ptr, head, DV, BLOCK_DV, SHORTCUT)[None, :]
        tl.store(param_part, tl.sum(g * v.to(tl.float32), axis=0), mask=e_mask)
    if LEPE != 0:
        v_head_ptr = v_ptr + batch.to(tl.int64) * stride_vb + head * stride_vh
        g_head_ptr = do_ptr + batch.to(tl.int64) * stride_gb + head * stride_gh
        dv += _lepe_taps(g_head_ptr, lepe_w_ptr, head * DV, offs_n, tok_mask, width, n_tokens, stride_gn, stride_gd,
                         DV, BLOCK_N, BLOCK_DV, True)
        row = offs_n // width
        col = offs_n % width
        height = n_tokens // width
        for tap in tl.static_range(9):
            di = tap // 3 - 1
            dj = tap % 3 - 1
            inside = tok_mask & (row + di >= 0) & (row + di < height) & (col + dj >= 0) & (col + dj < width)
            shifted = tl.load(v_head_ptr + (offs_n + di * width + dj)[:, None] * stride_vn
                              + offs_e[None, :] * stride_vd, mask=inside[:, None] & e_mask[None, :],
                              other=0.0).to(tl.float32)
            tl.store(param_part + (1 + tap) * slot, tl.sum(g * shifted, axis=0), mask=e_mask)
        if LEPE == 2:
            tl.store(param_part + 10 * slot, tl.sum(g, axis=0), mask=e_mask)
    _store_tile(dv_ptr + batch.to(tl.int64) * stride_dvb + head * stride_dvh, dv, offs_n, tok_mask,
                stride_dvn, stride_dvd, DV, BLOCK_DV)
    if WRITE_DQ:
        s_even, s_odd, _, _ = _load_state(state_ptr + bh * (DK * DV + DK), sigma, DK, DV, BLOCK_DK, BLOCK_DV)
        _, dqr_even, dqr_odd, dden = _q_grad(q_even, q_odd, qr_even, qr_odd, g,
                                             _smma(s_even, dot_dtype, STATE_F32),
                                             _smma(s_odd, dot_dtype, STATE_F32),
                                             km_even, km_odd, dot_dtype, STATE_F32, NORM, PRECISION)
        dqr_sum_even += dqr_even
        dqr_sum_odd += dqr_odd
        dden_sum += dden
    return dkr_even, dkr_odd, dkm_even, dkm_odd, dqr_sum_even, dqr_sum_odd, dden_sum


@triton.jit(do_not_specialize=['n_tokens', 'width', 'num_heads', 'qk_heads', 'heads_per_program'])
def _bwd_kv_kernel(q_ptr, k_ptr, v_ptr, gate_ptr, do_ptr, shortcut_ptr, lepe_w_ptr, state_ptr, dstate_ptr,
                   dq_ptr, dk_ptr, dv_ptr, dgate_ptr, dparam_ptr,
                   stride_qb, stride_qn, stride_qh, stride_qd,
                   stride_kb, stride_kn, stride_kh, stride_kd,
                   stride_vb, stride_vn, stride_vh, stride_vd,
                   stride_sb, stride_sn, stride_sh, stride_sd,
                   stride_gb, stride_gn, stride_gh, stride_gd,
                   stride_dqb, stride_dqn, stride_dqh, stride_dqd,
                   stride_dkb, stride_dkn, stride_dkh, stride_dkd,
                   stride_dvb, stride_dvn, stride_dvh, stride_dvd,
                   stride_dsb, stride_dsn, stride_dsh, stride_dsd,
                   n_tokens, width, num_heads, qk_heads, heads_per_program,
                   DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                   BLOCK_N: tl.constexpr, FEATURE_ELU: tl.constexpr, ROPE: tl.constexpr, NORM: tl.constexpr,
                   GATE: tl.constexpr, SHORTCUT: tl.constexpr, LEPE: tl.constexpr, PARAM_SLOTS: tl.constexpr,
                   STATE_F32: tl.constexpr, WRITE_DQ: tl.constexpr, LOAD_DO: tl.constexpr, PRECISION: tl.constexpr,
                   FAST_SINCOS: tl.constexpr):
    """For one tile of tokens and heads_per_program value heads (1, or all of them when they share q / k):
        du_n = K~_n^T (sigma dS)     dv_n = s_n * du_n [+ D * do_n]     dgate_n = du_n . v_n (per head / channel)
        dk_n = (R^T sum_h (sigma dS_h) u_n + sum_h sigma dksum_h) * phi'(k_n)
        with a shared query (WRITE_DQ): dq_n = (R^T sum_h dQ~_h + sum_h dden_h sigma ksum) * phi'(q_n)
        with a shortcut: per-tile partials of dD = sum_n do_n * v_n, [tiles, B*H(, Dv)]."""
    group = tl.program_id(0)
    tile = tl.program_id(1)
    groups = num_heads // heads_per_program
    batch = group // groups
    first_head = (group % groups) * heads_per_program
    qk_head = first_head % qk_heads
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    tok_mask = offs_n < n_tokens
    k_ptr += batch.to(tl.int64) * stride_kb + qk_head * stride_kh
    dk_ptr += batch.to(tl.int64) * stride_dkb + qk_head * stride_dkh
    dot_dtype = v_ptr.dtype.element_ty
    sigma = _sigma(n_tokens, NORM)

    k_even, k_odd = _load_features(k_ptr, offs_n, tok_mask, stride_kn, stride_kd, DK, BLOCK_N, BLOCK_DK,
                                   FEATURE_ELU)
    cos, sin = _rope_cos_sin(offs_n, width, qk_head, qk_heads * DK, DK, BLOCK_DK, ROPE, FAST_SINCOS)
    kr_even, kr_odd = _rotate(k_even, k_odd, cos, sin, ROPE)
    kr_even = _smma(kr_even, dot_dtype, STATE_F32)
    kr_odd = _smma(kr_odd, dot_dtype, STATE_F32)
    dkr_even = tl.zeros((BLOCK_N, BLOCK_DK // 2), tl.float32)
    dkr_odd = tl.zeros((BLOCK_N, BLOCK_DK // 2), tl.float32)
    dkm_even = tl.zeros((BLOCK_DK // 2,), tl.float32)
    dkm_odd = tl.zeros((BLOCK_DK // 2,), tl.float32)
    if WRITE_DQ:
        q_ptr += batch.to(tl.int64) * stride_qb + qk_head * stride_qh
        dq_ptr += batch.to(tl.int64) * stride_dqb + qk_head * stride_dqh
        q_even, q_odd = _load_features(q_ptr, offs_n, tok_mask, stride_qn, stride_qd, DK, BLOCK_N, BLOCK_DK,
                                       FEATURE_ELU)
        qr_even, qr_odd = _rotate(q_even, q_odd, cos, sin, ROPE)
        dqr_sum_even = tl.zeros((BLOCK_N, BLOCK_DK // 2), tl.float32)
        dqr_sum_odd = tl.zeros((BLOCK_N, BLOCK_DK // 2), tl.float32)
        dden_sum = tl.zeros((BLOCK_N,), tl.float32)
        # sigma ksum: the same in every head's state record when the heads share k.
        _, _, km_even, km_odd = _load_state(state_ptr + (batch * num_heads + first_head).to(tl.int64) * (DK * DV + DK),
                                            sigma, DK, DV, BLOCK_DK, BLOCK_DV)
    else:
        # Placeholders for the shared-q/k arguments of _bwd_kv_head (unused there without WRITE_DQ).
        q_even, q_odd, qr_even, qr_odd, km_even, km_odd = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        dqr_sum_even, dqr_sum_odd, dden_sum = 0.0, 0.0, 0.0
    batch_heads = tl.num_programs(0) * heads_per_program
    if WRITE_DQ:
        # Shared q / k: sum every head's dQ~, dK~ here, so dq and dk are written once.
        for i in tl.range(0, heads_per_program):
            dkr_even, dkr_odd, dkm_even, dkm_odd, dqr_sum_even, dqr_sum_odd, dden_sum = _bwd_kv_head(
                first_head + i, batch, tile, offs_n, tok_mask, kr_even, kr_odd, q_even, q_odd, qr_even, qr_odd,
                dkr_even, dkr_odd, dkm_even, dkm_odd, dqr_sum_even, dqr_sum_odd, dden_sum, km_even, km_odd, sigma,
                v_ptr, gate_ptr, do_ptr, shortcut_ptr, lepe_w_ptr, state_ptr, dstate_ptr, dv_ptr, dgate_ptr,
                dparam_ptr, width, n_tokens,
                stride_vb, stride_vn, stride_vh, stride_vd, stride_sb, stride_sn, stride_sh, stride_sd,
                stride_gb, stride_gn, stride_gh, stride_gd, stride_dvb, stride_dvn, stride_dvh, stride_dvd,
                stride_dsb, stride_dsn, stride_dsh, stride_dsd, num_heads, batch_heads,
                DK, DV, BLOCK_DK, BLOCK_DV, BLOCK_N, NORM, GATE, SHORTCUT, LEPE, PARAM_SLOTS, STATE_F32, WRITE_DQ,
                LOAD_DO, PRECISION)
    else:
        dkr_even, dkr_odd, dkm_even, dkm_odd, dqr_sum_even, dqr_sum_odd, dden_sum = _bwd_kv_head(
            first_head, batch, tile, offs_n, tok_mask, kr_even, kr_odd, q_even, q_odd, qr_even, qr_odd,
                dkr_even, dkr_odd, dkm_even, dkm_odd, dqr_sum_even, dqr_sum_odd, dden_sum, km_even, km_odd, sigma,
                v_ptr, gate_ptr, do_ptr, shortcut_ptr, lepe_w_ptr, state_ptr, dstate_ptr, dv_ptr, dgate_ptr,
                dparam_ptr, width, n_tokens,
                stride_vb, stride_vn, stride_vh, stride_vd, stride_sb, stride_sn, stride_sh, stride_sd,
                stride_gb, stride_gn, stride_gh, stride_gd, stride_dvb, stride_dvn, stride_dvh, stride_dvd,
                stride_dsb, stride_dsn, stride_dsh, stride_dsd, num_heads, batch_heads,
                DK, DV, BLOCK_DK, BLOCK_DV, BLOCK_N, NORM, GATE, SHORTCUT, LEPE, PARAM_SLOTS, STATE_F32, WRITE_DQ,
                LOAD_DO, PRECISION)
    dk_even, dk_odd = _rotate_back(dkr_even, dkr_odd, cos, sin, ROPE)
    if NORM == 0:
        dk_even += dkm_even[None, :]
        dk_odd += dkm_odd[None, :]
    dk_even = dk_even * _feature_grad(k_even, FEATURE_ELU)
    dk_odd = dk_odd * _feature_grad(k_odd, FEATURE_ELU)
    _store_pairs(dk_ptr, offs_n, tok_mask, stride_dkn, stride_dkd, dk_even, dk_odd, DK, BLOCK_N, BLOCK_DK)
    if WRITE_DQ:
        dq_even, dq_odd = _rotate_back(dqr_sum_even, dqr_sum_odd, cos, sin, ROPE)
        if NORM == 0:
            dq_even += dden_sum[:, None] * km_even[None, :]
            dq_odd += dden_sum[:, None] * km_odd[None, :]
        dq_even = dq_even * _feature_grad(q_even, FEATURE_ELU)
        dq_odd = dq_odd * _feature_grad(q_odd, FEATURE_ELU)
        _store_pairs(dq_ptr, offs_n, tok_mask, stride_dqn, stride_dqd, dq_even, dq_odd, DK, BLOCK_N, BLOCK_DK)


# ---------------------------------------------------------------------------------------------------------------
# Launchers

_SM_COUNTS = {}
_ARRIVAL_COUNTERS = {}


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 2 under the CPU interpreter (it only sets the chunk count)."""
    if device.type != 'cuda':
        return 2
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


def _arrival_counters(device: torch.device, count: int) -> torch.Tensor:
    """int32 zeros, one per (batch, head), that the reduction kernels count chunk arrivals in and leave at zero.

    Cached per device (zeroed once, not per call). The kernels of one stream run in order, so launches never share a
    counter; two streams running this op at the same time would need their own buffers.
    """
    counters = _ARRIVAL_COUNTERS.get(device)
    if counters is None or counters.numel() < count:
        counters = torch.zeros(max(count, 4096), dtype=torch.int32, device=device)
        _ARRIVAL_COUNTERS[device] = counters
    return counters


def _config(dk: int, dv: int, dtype: torch.dtype):
    """(kernel constexprs, reduction tile, apply tile, warps): they depend on the head dims and dtype, never on
    sizes."""
    interpreted = os.environ.get('TRITON_INTERPRET', '0') == '1'
    block_dk = max(32, triton.next_power_of_2(dk))  # tl.dot needs every dim >= 16, and BLOCK_DK // 2 is one
    block_dv = max(16, triton.next_power_of_2(dv))
    meta = dict(DK=dk, DV=dv, BLOCK_DK=block_dk, BLOCK_DV=block_dv,
                # fp32 inputs ask for fp32 accuracy (tf32 would miss the fp32 tolerance); at AI ~ D/4 FLOP/B the
                # fp32 dots still fit under the memory roofline. Other dtypes feed the tensor cores natively.
                PRECISION='ieee' if dtype == torch.float32 else 'tf32',
                # PTX inline assembly does not run in the interpreter (its tl.sin/tl.cos are numpy's).
                FAST_SINCOS=not interpreted)
    return (meta, *_TILES[max(block_dk, block_dv), dtype.itemsize])


def _option_constexprs(feature_map, rope, norm, gate, shortcut, lepe_weight, lepe_bias, dtype):
    return dict(FEATURE_ELU=feature_map == 'elu', ROPE=bool(rope), NORM=NORMS.index(norm),
                GATE=0 if gate is None else gate.dim() - 2,  # [B, N, H] -> 1 (per head), [B, N, H, Dv] -> 2
                SHORTCUT=0 if shortcut is None else shortcut.dim(),  # [H] -> 1, [H, Dv] -> 2
                LEPE=0 if lepe_weight is None else (1 if lepe_bias is None else 2),  # weight only -> 1, + bias -> 2
                STATE_F32=_state_f32(norm, dtype))


def _state_f32(norm, dtype):
    """Whether the products with a state (S, dS and their Q~, K~, u, gc operands) run in fp32 (tf32 tensor cores)
    rather than in the input dtype. Without the denominator nothing scales these products down by 1 / (Q . mean K)
    ~ 1 / (Dk E[phi]^2) afterwards, so their absolute rounding errors reach out and the gradients that much larger
    than in MLLA:
      'none': |S| also grows with N and leaves the fp16 range: fp32 for fp16 and bf16.
      'mean': bf16 operands (8 significant bits) gave dv errors up to 1.09x the bf16 tolerance of the tests (dv =
              0.51 summed from terms of total size 38: ELU+1, Dk 32, a [B, N, H] gate); tf32 operands (11 bits)
              bring it to 0.29x (fp64 emulation of truncating tf32). fp16 has tf32's 11 bits and the mean stays in
              range: fp16 operands kept.
    MLLA's denominator keeps them in the input dtype (its hot path; at most 0.22x the bf16 tolerance in the tests)."""
    return (norm == 'none' and dtype != torch.float32) or (norm == 'mean' and dtype == torch.bfloat16)


def _chunking(n_tokens: int, programs: int, block_n: int, device: torch.device):
    """(tokens per chunk, chunks) for the reduction kernels: enough programs to fill the device."""
    wanted = triton.cdiv(PROGRAMS_PER_SM * _sm_count(device), programs)
    chunk_tokens = max(triton.cdiv(triton.cdiv(n_tokens, wanted), block_n) * block_n, MIN_CHUNK)
    return chunk_tokens, triton.cdiv(n_tokens, chunk_tokens)


def _bwd_kv_tile(apply_n, gate, shortcut, shared_qk, lepe_weight=None, state_f32=False, block_d=0):
    """Tokens per _bwd_kv_kernel program. MLLA's setting: the apply tile. Shared q/k: 16, since each head step holds
    the fp32 S and dS of its head (at Dk = Dv = 64, 32 tokens already spill ~600 B on sm_90, 16 tokens do not).
    A gate, shortcut or LePE: half the apply tile (they hold more tiles; the full tile spills at D = 32), and 16
    with fp32 state operands at max(BLOCK_DK, BLOCK_DV) = block_d >= 64 (32 tokens spill 16-84 B there)."""
    if shared_qk:
        return 16
    if gate is None and shortcut is None and lepe_weight is None:
        return apply_n
    return 16 if state_f32 and block_d >= 64 else max(16, apply_n // 2)


def _check_grid(tiles, n_tokens, block_n):
    if tiles > 65535:  # CUDA's limit on grid axis 1
        raise ValueError(f'linear_attention (triton): N={n_tokens} tokens make {tiles} tiles of {block_n}, over the '
                         f'65535 a grid axis allows (use backend="torch" or smaller maps)')


def split_qk(qk: torch.Tensor, heads: int, shared_qk: bool, qk_order: str):
    """Views q, k [B, N, Hk, Dk] of a packed [B, N, 2 * Hk * Dk] tensor (Hk = 1 when the heads share them)."""
    half = qk.shape[-1] // 2
    first, second = qk[..., :half], qk[..., half:]
    q, k = (first, second) if qk_order == 'qk' else (second, first)
    qk_heads = 1 if shared_qk else heads
    return q.unflatten(-1, (qk_heads, half // qk_heads)), k.unflatten(-1, (qk_heads, half // qk_heads))


def _gate_strides(gate):
    """(batch, token, head, channel) strides of a [B, N, H] or [B, N, H, Dv] gate (0 where it has no such dim)."""
    if gate is None:
        return 0, 0, 0, 0
    return (*gate.stride(), 0) if gate.dim() == 3 else gate.stride()


def _forward(qk, v, gate, shortcut, lepe_weight, lepe_bias, width, feature_map, rope, norm, shared_qk, qk_order):
    batch, n_tokens, heads, dv = v.shape
    q, k = split_qk(qk, heads, shared_qk, qk_order)
    qk_heads, dk = q.shape[2], q.shape[3]
    meta, reduce_n, apply_n, warps = _config(dk, dv, v.dtype)
    options = _option_constexprs(feature_map, rope, norm, gate, shortcut, lepe_weight, lepe_bias, v.dtype)
    chunk_tokens, chunks = _chunking(n_tokens, batch * heads, reduce_n, v.device)
    record = dk * dv + dk
    state = torch.empty(batch * heads, record, device=v.device, dtype=torch.float32)
    partials = torch.empty(chunks, batch * heads, record, device=v.device, dtype=torch.float32) if chunks > 1 \
        else state
    _fwd_state_kernel[(batch * heads, chunks)](
        k, v, v if gate is None else gate, partials, state, _arrival_counters(v.device, batch * heads),
        *k.stride(), *v.stride(), *_gate_strides(gate), n_tokens, width, heads, qk_heads, chunk_tokens, chunks,
        BLOCK_N=reduce_n, BLOCK_R=REDUCE_BLOCK, num_warps=warps, num_stages=NUM_STAGES,
        FEATURE_ELU=options['FEATURE_ELU'], ROPE=options['ROPE'], NORM=options['NORM'], GATE=options['GATE'], **meta)
    out = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    _check_grid(triton.cdiv(n_tokens, apply_n), n_tokens, apply_n)
    _fwd_out_kernel[(batch * heads, triton.cdiv(n_tokens, apply_n))](
        q, v, state, v if shortcut is None else shortcut, v if lepe_weight is None else lepe_weight,
        v if lepe_bias is None else lepe_bias, out, *q.stride(), *v.stride(), *out.stride(),
        n_tokens, width, heads, qk_heads,
        BLOCK_N=apply_n, num_warps=warps, FEATURE_ELU=options['FEATURE_ELU'], ROPE=options['ROPE'],
        NORM=options['NORM'], SHORTCUT=options['SHORTCUT'], LEPE=options['LEPE'], STATE_F32=options['STATE_F32'],
        **meta)
    return out, state


def _backward(qk, v, gate, shortcut, lepe_weight, lepe_bias, state, grad_out, width, feature_map, rope, norm,
              shared_qk, qk_order):
    batch, n_tokens, heads, dv = v.shape
    q, k = split_qk(qk, heads, shared_qk, qk_order)
    qk_heads, dk = q.shape[2], q.shape[3]
    meta, reduce_n, apply_n, warps = _config(dk, dv, v.dtype)
    options = _option_constexprs(feature_map, rope, norm, gate, shortcut, lepe_weight, lepe_bias, v.dtype)
    chunk_tokens, chunks = _chunking(n_tokens, batch * heads, reduce_n, v.device)
    record = dk * dv + dk
    # One packed gradient of qk, written in full by the kernels: no zero-filled gradient per view.
    dqk = torch.empty(qk.shape, device=qk.device, dtype=qk.dtype)
    dq, dk_ = split_qk(dqk, heads, shared_qk, qk_order)
    dstate = torch.empty(batch * heads, record, device=v.device, dtype=torch.float32)
    partials = torch.empty(chunks, batch * heads, record, device=v.device, dtype=torch.float32) if chunks > 1 \
        else dstate
    _bwd_state_kernel[(batch * heads, chunks)](
        q, grad_out, state, dq, partials, dstate, _arrival_counters(v.device, batch * heads),
        *q.stride(), *grad_out.stride(), *dq.stride(), n_tokens, width, heads, qk_heads, chunk_tokens, chunks,
        BLOCK_N=reduce_n, BLOCK_R=REDUCE_BLOCK, num_warps=warps, num_stages=NUM_STAGES,
        FEATURE_ELU=options['FEATURE_ELU'], ROPE=options['ROPE'], NORM=options['NORM'],
        STATE_F32=options['STATE_F32'], WRITE_DQ=not shared_qk, **meta)
    dv_ = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    dgate = None if gate is None else torch.empty(gate.shape, device=gate.device, dtype=gate.dtype)
    kv_n = _bwd_kv_tile(apply_n, gate, shortcut, shared_qk, lepe_weight, options['STATE_F32'],
                        max(meta['BLOCK_DK'], meta['BLOCK_DV']))
    tiles = triton.cdiv(n_tokens, kv_n)
    _check_grid(tiles, n_tokens, kv_n)
    with_params = shortcut is not None or lepe_weight is not None
    param_parts = torch.empty(tiles, batch, PARAM_SLOTS, heads * dv, device=v.device, dtype=torch.float32) \
        if with_params else None
    heads_per_program = heads if shared_qk else 1
    _bwd_kv_kernel[(batch * heads // heads_per_program, tiles)](
        q, k, v, v if gate is None else gate, grad_out, v if shortcut is None else shortcut,
        v if lepe_weight is None else lepe_weight, state, dstate,
        dq, dk_, dv_, dv_ if dgate is None else dgate, dv_ if param_parts is None else param_parts,
        *q.stride(), *k.stride(), *v.stride(), *_gate_strides(gate), *grad_out.stride(), *dq.stride(),
        *dk_.stride(), *dv_.stride(), *_gate_strides(dgate),
        n_tokens, width, heads, qk_heads, heads_per_program,
        BLOCK_N=kv_n, num_warps=warps, PARAM_SLOTS=PARAM_SLOTS, WRITE_DQ=shared_qk,
        LOAD_DO=shared_qk or with_params, **options, **meta)
    dshortcut = dlepe_weight = dlepe_bias = None
    if with_params:
        # One launch sums every parameter's tile parts; unused slots are never read.
        params = param_parts.sum((0, 1))  # [PARAM_SLOTS, C]
        views = []

        def own(grad, dtype):
            """Custom-op outputs may not share storage: the first gradient may stay a view of the sum, later ones
            that would be views too are copied (a [C] or [C, 9] copy)."""
            grad = grad.to(dtype)
            if grad.untyped_storage().data_ptr() == params.untyped_storage().data_ptr():
                grad = grad.clone() if views else grad
                views.append(grad)
            return grad
        if lepe_weight is not None:
            dlepe_weight = own(params[1:10].t().reshape(lepe_weight.shape), lepe_weight.dtype)
        if lepe_bias is not None:
            dlepe_bias = own(params[10], lepe_bias.dtype)
        if shortcut is not None:
            dshortcut = params[0].view(heads, dv)
            dshortcut = own(dshortcut.sum(-1) if shortcut.dim() == 1 else dshortcut, shortcut.dtype)
    return dqk, dv_, dgate, dshortcut, dlepe_weight, dlepe_bias


# ---------------------------------------------------------------------------------------------------------------
# Torch custom ops (the pattern of kernels/backend.py): dynamo sees one opaque node forward and one backward.

@torch.library.custom_op('mlla_mm::linear_attention_fwd', mutates_args=())
def _linear_attention_fwd(qk: torch.Tensor, v: torch.Tensor, gate: Optional[torch.Tensor],
                          shortcut: Optional[torch.Tensor], lepe_weight: Optional[torch.Tensor],
                          lepe_bias: Optional[torch.Tensor], width: int, feature_map: str, rope: bool, norm: str,
                          shared_qk: bool, qk_order: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(qk, v, gate, shortcut, lepe_weight, lepe_bias, width, feature_map, rope, norm, shared_qk,
                    qk_order)


@_linear_attention_fwd.register_fake
def _(qk, v, gate, shortcut, lepe_weight, lepe_bias, width, feature_map, rope, norm, shared_qk, qk_order):
    batch, _, heads, dv = v.shape
    dk = qk.shape[-1] // 2 // (1 if shared_qk else heads)
    return v.new_empty(v.shape), v.new_empty((batch * heads, dk * dv + dk), dtype=torch.float32)


@torch.library.custom_op('mlla_mm::linear_attention_bwd', mutates_args=())
def _linear_attention_bwd(qk: torch.Tensor, v: torch.Tensor, gate: Optional[torch.Tensor],
                          shortcut: Optional[torch.Tensor], lepe_weight: Optional[torch.Tensor],
                          lepe_bias: Optional[torch.Tensor], state: torch.Tensor, grad_out: torch.Tensor, width: int,
                          feature_map: str, rope: bool, norm: str, shared_qk: bool,
                          qk_order: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                  torch.Tensor, torch.Tensor]:
    grads = _backward(qk, v, gate, shortcut, lepe_weight, lepe_bias, state, grad_out, width, feature_map, rope, norm,
                      shared_qk, qk_order)
    # A custom op returns tensors: an absent optional input gets an empty gradient, dropped by _backward_rule.
    return tuple(qk.new_empty(0) if grad is None else grad for grad in grads)


@_linear_attention_bwd.register_fake
def _(qk, v, gate, shortcut, lepe_weight, lepe_bias, state, grad_out, width, feature_map, rope, norm, shared_qk,
      qk_order):
    return tuple(qk.new_empty(0) if t is None else t.new_empty(t.shape)
                 for t in (qk, v, gate, shortcut, lepe_weight, lepe_bias))


_TENSOR_INPUTS = 6  # qk, v, gate, shortcut, lepe_weight, lepe_bias


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:_TENSOR_INPUTS], output[1])
    ctx.options = inputs[_TENSOR_INPUTS:]
    # The state is an internal output: no zero-filled gradient is made for it (a launch per backward).
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _backward_rule(ctx, grad_out, grad_state):
    *tensors, state = ctx.saved_tensors
    if grad_out is None:
        return (None,) * (_TENSOR_INPUTS + len(ctx.options))
    grads = _linear_attention_bwd(*tensors, state, grad_out, *ctx.options)
    return (*(None if t is None else grad for t, grad in zip(tensors, grads)), *[None] * len(ctx.options))


torch.library.register_autograd('mlla_mm::linear_attention_fwd', _backward_rule, setup_context=_setup_context)


def linear_attention_triton(qk: torch.Tensor, v: torch.Tensor, hw, *, feature_map: str = 'elu', rope: bool = True,
                            norm: str = 'denominator', gate=None, shortcut=None, lepe_weight=None, lepe_bias=None,
                            shared_qk: bool = False, qk_order: str = 'qk') -> torch.Tensor:
    """The Triton kernels; same signature and result as ``linear_attention_reference`` (inputs checked by the
    public ``linear_attention``). Both head dims must be at most 128, and Dk even (RoPE pairs and the kernels' even /
    odd channel split must not straddle heads)."""
    heads, dv = v.shape[2], v.shape[3]
    dk = qk.shape[-1] // 2 // (1 if shared_qk else heads)
    if dk % 2 or dk > MAX_HEAD_DIM or dv > MAX_HEAD_DIM:
        raise ValueError(f'linear_attention (triton): query/key head dim {dk} (qk {tuple(qk.shape)}) and value head '
                         f'dim {dv} (v {tuple(v.shape)}) are not supported: Dk must be even and both <= '
                         f'{MAX_HEAD_DIM} (use backend="torch")')
    if v.numel() == 0:
        return torch.empty(v.shape, device=v.device, dtype=v.dtype)
    out, _ = _linear_attention_fwd(qk, v, gate, shortcut, lepe_weight, lepe_bias, int(hw[1]), feature_map,
                                   bool(rope), norm, shared_qk, qk_order)
    return out
