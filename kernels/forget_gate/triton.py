"""Chunked gated linear attention (per-key-channel decay) in Triton: kernels, launchers, torch custom ops.

The math is in ``reference.py``. Notation per (batch, head): blocks of BT = 16 tokens; b = the block-local inclusive
cumsum of g in float32; S = the [Dk, Dv] float32 state entering the block; E_ijn = exp(b_in - b_jn) for i >= j, else 0
(formed as a difference before the exp, element by element: mlla_ablations.md section 4.4 shows why factoring it
overflows). Every exponent below is <= 0.
    o      = scale * [ (q * e^b) S + A v ],     A_ij = sum_n q_in k_jn E_ijn
    S'     = e^{b_last} * S + (k * e^{b_last - b})^T v
    dq     = scale * [ e^b * (do S^T) + sum_j P_ij k_j E_ij ],     P = do v^T
    dk     = scale * sum_i P_ij q_i E_ij + e^{b_last - b} * (v dS'^T)
    dv     = scale * A^T do + (k * e^{b_last - b}) dS'
    dS     = e^{b_last} * dS' + scale * (q * e^b)^T do
    dg_t   = sum_{s >= t} (q_s dq_s - k_s dk_s)     (g enters only through differences b_i - b_j)
The tail of the dg sum past a boundary equals sum_v (S * dS) at that boundary (the pairs that straddle it), which
seeds each segment's reverse walk exactly instead of summing over the whole sequence.

Parallelism: the tokens are cut into segments of ``segment_len`` tokens (a runtime multiple of BT, chosen so that
about PROGRAMS_PER_SM programs run per SM); one program walks the blocks of one segment of one (batch, head).
    forward   _segment_state_kernel  grid (segments, B*H): local state of each segment (from 0) and its log decay
              _pass_states_kernel    grid (B*H, tiles):  sequential over segments -> state entering each one
              _output_kernel         grid (segments, B*H): o
    backward  _dq_kernel             grid (segments, B*H): dq, q*dq (fp32) and each segment's local dS
              _pass_states_kernel    (reversed): dS leaving each segment
              _dk_kernel             grid (segments, B*H, Dk tiles): dk, dg  } walking the segment backwards,
              _dv_kernel             grid (segments, B*H, Dv tiles): dv      } each with its tile of dS
Only q, k, v, g are saved for backward, which recomputes the segment-boundary states ([B*H, segments + 1, Dk, Dv],
float32) with the first two forward kernels.
Sizes (N, heads, segment length, segment count) are runtime arguments excluded from specialization; the constexprs
depend on the head dims and dtype only, so a new image size never recompiles.
"""
import torch
import triton
import triton.language as tl

from .reference import merge_routes, routes, stack_routes

BLOCK_T = 16  # tokens per block: tl.dot needs >= 16, and the [BT, BT, Dk] decay tile grows with its square
MAX_HEAD_DIM = 128
MIN_SEGMENT = 256  # tokens; a segment state (Dk*Dv*4 bytes) is amortised over at least this many tokens
PROGRAMS_PER_SM = 4
# Warps of the kernels that hold [BT, BT, Dk] decay tiles (output, dq, dk, dv). 4 warps spill more than 8.
TILE_WARPS = 8
# Register budget of the backward's key / value tiles (float32 elements of the dS tile a _dk_kernel / _dv_kernel
# program holds; its [BT, BT, tile] decay product scales alike). ptxas -v for sm_90, 8 warps, fp32 / fp16 / bf16:
# no spills at Dk = 32, Dv = 33 (MLLA's head with the normaliser column), Dk = Dv = 32 and Dk = Dv = 64, where the
# one dk+dv kernel these two replace stored up to 600 B of spills; at Dk = Dv = 128 the dk kernel spills 36-144 B
# (fp16, fp32), the one kernel 1.7-3.3 KB.
DK_TILE_ELEMENTS = 2048  # key channels per _dk_kernel program: 2048 // BV (32 up to Dv = 64)
DV_TILE_ELEMENTS = 4096  # value channels per _dv_kernel program: 4096 // BK (64 up to Dk = 64)

_SIZES = ['n_tokens', 'n_heads', 'segment_len', 'n_segments']


@triton.jit
def _load_block(ptr, t, t_mask, row_stride, D, BD: tl.constexpr):
    """A [BT, BD] float32 tile of tokens t, columns 0..D-1 of ptr (0 outside the tensor)."""
    d = tl.arange(0, BD)
    mask = t_mask[:, None] & (d[None, :] < D)
    return tl.load(ptr + t[:, None].to(tl.int64) * row_stride + d[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_block(ptr, x, t, t_mask, row_stride, D, BD: tl.constexpr):
    d = tl.arange(0, BD)
    mask = t_mask[:, None] & (d[None, :] < D)
    tl.store(ptr + t[:, None].to(tl.int64) * row_stride + d[None, :], x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _state_offsets(row_start, col_start, DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Offsets and mask of the [BK, BV] tile of a [DK, DV] state from (row_start, col_start)."""
    rows = row_start + tl.arange(0, BK)
    cols = col_start + tl.arange(0, BV)
    return rows[:, None] * DV + cols[None, :], (rows[:, None] < DK) & (cols[None, :] < DV)


@triton.jit
def _intra_decay(b, BT: tl.constexpr):
    """E [BT, BT, BK]: exp(b_i - b_j) for i >= j, 0 above the diagonal (masked before the exp)."""
    i = tl.arange(0, BT)
    causal = (i[:, None] >= i[None, :])[:, :, None]
    return tl.exp(tl.where(causal, b[:, None, :] - b[None, :, :], float('-inf')))


@triton.jit
def _last_row(x, BT: tl.constexpr):
    return tl.sum(tl.where((tl.arange(0, BT) == BT - 1)[:, None], x, 0.0), axis=0)


@triton.jit
def _bases(n_tokens, n_heads, DK: tl.constexpr, DV: tl.constexpr):
    """Offsets of this (batch, head) in the [B, N, H, D] inputs and its index in the state buffers."""
    bh = tl.program_id(1)
    batch = (bh // n_heads).to(tl.int64)
    head = bh % n_heads
    base_k = batch * n_tokens * n_heads * DK + head * DK
    base_v = batch * n_tokens * n_heads * DV + head * DV
    return bh.to(tl.int64), base_k, base_v


@triton.jit(do_not_specialize=_SIZES)
def _segment_state_kernel(k_ptr, v_ptr, g_ptr, local_ptr, log_decay_ptr, n_tokens, n_heads, segment_len, n_segments,
                          DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                          BT: tl.constexpr, PRECISION: tl.constexpr):
    segment = tl.program_id(0)
    bh, base_k, base_v = _bases(n_tokens, n_heads, DK, DV)
    k_ptr += base_k
    g_ptr += base_k
    v_ptr += base_v
    state = tl.zeros([BK, BV], dtype=tl.float32)
    total = tl.zeros([BK], dtype=tl.float32)
    for start in range(0, segment_len, BT):
        t = segment * segment_len + start + tl.arange(0, BT)
        t_mask = t < n_tokens
        k = _load_block(k_ptr, t, t_mask, n_heads * DK, DK, BK)
        v = _load_block(v_ptr, t, t_mask, n_heads * DV, DV, BV)
        b = tl.cumsum(_load_block(g_ptr, t, t_mask, n_heads * DK, DK, BK), axis=0)
        b_last = _last_row(b, BT)
        state = state * tl.exp(b_last)[:, None] + tl.dot(tl.trans(k * tl.exp(b_last[None, :] - b)), v,
                                                         input_precision=PRECISION)
        total += b_last
    record = bh * n_segments + segment
    offsets, mask = _state_offsets(0, 0, DK, DV, BK, BV)
    tl.store(local_ptr + record * DK * DV + offsets, state, mask=mask)
    keys = tl.arange(0, BK)
    tl.store(log_decay_ptr + record * DK + keys, total, mask=keys < DK)


@triton.jit(do_not_specialize=['n_segments'])
def _pass_states_kernel(local_ptr, log_decay_ptr, out_ptr, n_segments, DK: tl.constexpr, DV: tl.constexpr,
                        BLOCK: tl.constexpr, REVERSE: tl.constexpr):
    """x = 0; for each segment s in order (REVERSE: backwards): out[s] = x; x = exp(log_decay[s]) * x + local[s].
    Forward: out[s] is the state entering segment s, and out[n_segments] the final state. Reverse: out[s] is dL/d(the
    state leaving segment s)."""
    bh = tl.program_id(0).to(tl.int64)
    element = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = element < DK * DV
    key = element // DV
    x = tl.zeros([BLOCK], dtype=tl.float32)
    for step in range(0, n_segments):
        if REVERSE:
            segment = n_segments - 1 - step
        else:
            segment = step
        tl.store(out_ptr + (bh * (n_segments + 1) + segment) * DK * DV + element, x, mask=mask)
        record = bh * n_segments + segment
        decay = tl.exp(tl.load(log_decay_ptr + record * DK + key, mask=mask, other=0.0))
        x = decay * x + tl.load(local_ptr + record * DK * DV + element, mask=mask, other=0.0)
    if not REVERSE:
        tl.store(out_ptr + (bh * (n_segments + 1) + n_segments) * DK * DV + element, x, mask=mask)


@triton.jit(do_not_specialize=_SIZES)
def _output_kernel(q_ptr, k_ptr, v_ptr, g_ptr, states_ptr, o_ptr, scale, n_tokens, n_heads, segment_len, n_segments,
                   DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   BT: tl.constexpr, PRECISION: tl.constexpr):
    segment = tl.program_id(0)
    bh, base_k, base_v = _bases(n_tokens, n_heads, DK, DV)
    q_ptr += base_k
    k_ptr += base_k
    g_ptr += base_k
    v_ptr += base_v
    o_ptr += base_v
    offsets, mask = _state_offsets(0, 0, DK, DV, BK, BV)
    state = tl.load(states_ptr + (bh * (n_segments + 1) + segment) * DK * DV + offsets, mask=mask, other=0.0)
    for start in range(0, segment_len, BT):
        t = segment * segment_len + start + tl.arange(0, BT)
        t_mask = t < n_tokens
        q = _load_block(q_ptr, t, t_mask, n_heads * DK, DK, BK)
        k = _load_block(k_ptr, t, t_mask, n_heads * DK, DK, BK)
        v = _load_block(v_ptr, t, t_mask, n_heads * DV, DV, BV)
        b = tl.cumsum(_load_block(g_ptr, t, t_mask, n_heads * DK, DK, BK), axis=0)
        scores = tl.sum(q[:, None, :] * k[None, :, :] * _intra_decay(b, BT), axis=2)
        o = tl.dot(q * tl.exp(b), state, input_precision=PRECISION)
        o = tl.dot(scores, v, o, input_precision=PRECISION)
        _store_block(o_ptr, o * scale, t, t_mask, n_heads * DV, DV, BV)
        b_last = _last_row(b, BT)
        state = state * tl.exp(b_last)[:, None] + tl.dot(tl.trans(k * tl.exp(b_last[None, :] - b)), v,
                                                         input_precision=PRECISION)


@triton.jit(do_not_specialize=_SIZES)
def _dq_kernel(q_ptr, k_ptr, v_ptr, g_ptr, states_ptr, do_ptr, dq_ptr, q_dq_ptr, dlocal_ptr, scale,
               n_tokens, n_heads, segment_len, n_segments,
               DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
               BT: tl.constexpr, PRECISION: tl.constexpr):
    """Walks the segment forwards: dq, q * dq (float32, for dg) and the segment's local dS, i.e. the gradient of its
    own outputs with respect to the state entering it."""
    segment = tl.program_id(0)
    bh, base_k, base_v = _bases(n_tokens, n_heads, DK, DV)
    q_ptr += base_k
    k_ptr += base_k
    g_ptr += base_k
    dq_ptr += base_k
    q_dq_ptr += base_k
    v_ptr += base_v
    do_ptr += base_v
    offsets, mask = _state_offsets(0, 0, DK, DV, BK, BV)
    state = tl.load(states_ptr + (bh * (n_segments + 1) + segment) * DK * DV + offsets, mask=mask, other=0.0)
    dlocal = tl.zeros([BK, BV], dtype=tl.float32)
    decay_before = tl.zeros([BK], dtype=tl.float32)  # log decay from the segment start to this block
    for start in range(0, segment_len, BT):
        t = segment * segment_len + start + tl.arange(0, BT)
        t_mask = t < n_tokens
        q = _load_block(q_ptr, t, t_mask, n_heads * DK, DK, BK)
        k = _load_block(k_ptr, t, t_mask, n_heads * DK, DK, BK)
        v = _load_block(v_ptr, t, t_mask, n_heads * DV, DV, BV)
        do = _load_block(do_ptr, t, t_mask, n_heads * DV, DV, BV)
        b = tl.cumsum(_load_block(g_ptr, t, t_mask, n_heads * DK, DK, BK), axis=0)
        p = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        dq = tl.dot(do, tl.trans(state), input_precision=PRECISION) * tl.exp(b)
        dq += tl.sum(p[:, :, None] * k[None, :, :] * _intra_decay(b, BT), axis=1)
        dq *= scale
        _store_block(dq_ptr, dq, t, t_mask, n_heads * DK, DK, BK)
        _store_block(q_dq_ptr, q * dq, t, t_mask, n_heads * DK, DK, BK)
        dlocal += tl.dot(tl.trans(q * tl.exp(b + decay_before[None, :])), do, input_precision=PRECISION) * scale
        b_last = _last_row(b, BT)
        state = state * tl.exp(b_last)[:, None] + tl.dot(tl.trans(k * tl.exp(b_last[None, :] - b)), v,
                                                         input_precision=PRECISION)
        decay_before += b_last
    tl.store(dlocal_ptr + (bh * n_segments + segment) * DK * DV + offsets, dlocal, mask=mask)


@triton.jit(do_not_specialize=_SIZES)
def _dk_kernel(q_ptr, k_ptr, v_ptr, g_ptr, states_ptr, dstates_ptr, do_ptr, q_dq_ptr, dk_ptr, dg_ptr, scale,
               n_tokens, n_heads, segment_len, n_segments,
               DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
               BT: tl.constexpr, PRECISION: tl.constexpr):
    """Walks the segment backwards from dS = dL/d(state leaving it): dk and dg of the BK key channels of program
    axis 2 (every term of both is per key channel once P = do v^T, over all of Dv, is formed), with the BK rows of dS
    they need."""
    segment = tl.program_id(0)
    bh, base_k, base_v = _bases(n_tokens, n_heads, DK, DV)
    key_start = tl.program_id(2) * BK
    q_ptr += base_k + key_start
    k_ptr += base_k + key_start
    g_ptr += base_k + key_start
    q_dq_ptr += base_k + key_start
    dk_ptr += base_k + key_start
    dg_ptr += base_k + key_start
    v_ptr += base_v
    do_ptr += base_v
    keys = DK - key_start  # key channels left from key_start
    offsets, mask = _state_offsets(key_start, 0, DK, DV, BK, BV)
    boundary = (bh * (n_segments + 1) + segment) * DK * DV + offsets
    dstate = tl.load(dstates_ptr + boundary, mask=mask, other=0.0)
    # dg past the segment's end: the (query after, key before) pairs that straddle it, i.e. sum_v S * dS there.
    dg_after = tl.sum(tl.load(states_ptr + boundary + DK * DV, mask=mask, other=0.0) * dstate, axis=1)
    n_blocks = tl.cdiv(segment_len, BT)
    for step in range(0, n_blocks):
        t = segment * segment_len + (n_blocks - 1 - step) * BT + tl.arange(0, BT)
        t_mask = t < n_tokens
        q = _load_block(q_ptr, t, t_mask, n_heads * DK, keys, BK)
        k = _load_block(k_ptr, t, t_mask, n_heads * DK, keys, BK)
        v = _load_block(v_ptr, t, t_mask, n_heads * DV, DV, BV)
        do = _load_block(do_ptr, t, t_mask, n_heads * DV, DV, BV)
        b = tl.cumsum(_load_block(g_ptr, t, t_mask, n_heads * DK, keys, BK), axis=0)
        b_last = _last_row(b, BT)
        p = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        dk = tl.sum(p[:, :, None] * q[:, None, :] * _intra_decay(b, BT), axis=0) * scale
        dk += tl.dot(v, tl.trans(dstate), input_precision=PRECISION) * tl.exp(b_last[None, :] - b)
        _store_block(dk_ptr, dk, t, t_mask, n_heads * DK, keys, BK)
        d_b = _load_block(q_dq_ptr, t, t_mask, n_heads * DK, keys, BK) - k * dk  # dL/db_t
        _store_block(dg_ptr, tl.cumsum(d_b, axis=0, reverse=True) + dg_after[None, :], t, t_mask,
                     n_heads * DK, keys, BK)
        dg_after += tl.sum(d_b, axis=0)
        dstate = dstate * tl.exp(b_last)[:, None] + tl.dot(tl.trans(q * tl.exp(b)), do,
                                                           input_precision=PRECISION) * scale


@triton.jit(do_not_specialize=_SIZES)
def _dv_kernel(q_ptr, k_ptr, g_ptr, dstates_ptr, do_ptr, dv_ptr, scale, n_tokens, n_heads, segment_len, n_segments,
               DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
               BT: tl.constexpr, PRECISION: tl.constexpr):
    """Walks the segment backwards from dS: dv of the BV value channels of program axis 2, with the BV columns of dS
    they need (the scores A sum over all of Dk)."""
    segment = tl.program_id(0)
    bh, base_k, base_v = _bases(n_tokens, n_heads, DK, DV)
    value_start = tl.program_id(2) * BV
    q_ptr += base_k
    k_ptr += base_k
    g_ptr += base_k
    do_ptr += base_v + value_start
    dv_ptr += base_v + value_start
    values = DV - value_start  # value channels left from value_start
    offsets, mask = _state_offsets(0, value_start, DK, DV, BK, BV)
    dstate = tl.load(dstates_ptr + (bh * (n_segments + 1) + segment) * DK * DV + offsets, mask=mask, other=0.0)
    n_blocks = tl.cdiv(segment_len, BT)
    for step in range(0, n_blocks):
        t = segment * segment_len + (n_blocks - 1 - step) * BT + tl.arange(0, BT)
        t_mask = t < n_tokens
        q = _load_block(q_ptr, t, t_mask, n_heads * DK, DK, BK)
        k = _load_block(k_ptr, t, t_mask, n_heads * DK, DK, BK)
        do = _load_block(do_ptr, t, t_mask, n_heads * DV, values, BV)
        b = tl.cumsum(_load_block(g_ptr, t, t_mask, n_heads * DK, DK, BK), axis=0)
        b_last = _last_row(b, BT)
        scores = tl.sum(q[:, None, :] * k[None, :, :] * _intra_decay(b, BT), axis=2) * scale
        dv = tl.dot(tl.trans(scores), do, input_precision=PRECISION)
        dv = tl.dot(k * tl.exp(b_last[None, :] - b), dstate, dv, input_precision=PRECISION)
        _store_block(dv_ptr, dv, t, t_mask, n_heads * DV, values, BV)
        dstate = dstate * tl.exp(b_last)[:, None] + tl.dot(tl.trans(q * tl.exp(b)), do,
                                                           input_precision=PRECISION) * scale


_SM_COUNTS = {}


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 2 under the CPU interpreter (it only sets the segment count)."""
    if device.type != 'cuda':
        return 2
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


def _meta(q, v):
    dim_k, dim_v = q.shape[-1], v.shape[-1]
    return dict(DK=dim_k, DV=dim_v, BK=max(16, triton.next_power_of_2(dim_k)),
                BV=max(16, triton.next_power_of_2(dim_v)), BT=BLOCK_T,
                # Products on the tensor cores. fp32 and fp16 inputs get 3-pass tf32 (~fp32 accuracy): one tf32
                # rounding (2^-11) of the float32 state and of q * e^b is an error as large as fp16's own rounding.
                # On sm_90 it also spills less than the 'ieee' FMA path at Dk = 64 (0 vs ~5 KB in the dq kernel).
                # bf16 (2^-8) is far coarser than one tf32 rounding.
                PRECISION='tf32' if q.dtype == torch.bfloat16 else 'tf32x3')


def _segments(n_tokens: int, programs: int, device: torch.device, segment_len: int):
    """(segment length, segment count). ``segment_len`` > 0 forces a length (a multiple of BLOCK_T; tests)."""
    if segment_len <= 0:
        wanted = triton.cdiv(PROGRAMS_PER_SM * _sm_count(device), programs)
        segment_len = max(triton.cdiv(triton.cdiv(n_tokens, wanted), BLOCK_T) * BLOCK_T, MIN_SEGMENT)
    elif segment_len % BLOCK_T:
        raise ValueError(f'forget_gate: segment_len={segment_len} is not a multiple of {BLOCK_T}')
    return segment_len, triton.cdiv(n_tokens, segment_len)


def _pass(local, log_decay, reverse):
    bh, n_segments, dim_k, dim_v = local.shape
    out = torch.empty(bh, n_segments + 1, dim_k, dim_v, device=local.device, dtype=torch.float32)
    block = min(1024, triton.next_power_of_2(dim_k * dim_v))
    _pass_states_kernel[(bh, triton.cdiv(dim_k * dim_v, block))](
        local, log_decay, out, n_segments, DK=dim_k, DV=dim_v, BLOCK=block, REVERSE=reverse)
    return out


def _segment_states(q, k, v, g, segment_len):
    """(launch grid, size args, kernel meta, states entering each segment + the final one, segment log decays)."""
    batch, n_tokens, n_heads, dim_k = q.shape
    dim_v = v.shape[-1]
    meta = _meta(q, v)
    segment_len, n_segments = _segments(n_tokens, batch * n_heads, q.device, segment_len)
    grid = (n_segments, batch * n_heads)
    sizes = (n_tokens, n_heads, segment_len, n_segments)
    local = torch.empty(batch * n_heads, n_segments, dim_k, dim_v, device=q.device, dtype=torch.float32)
    log_decay = torch.empty(batch * n_heads, n_segments, dim_k, device=q.device, dtype=torch.float32)
    _segment_state_kernel[grid](k, v, g, local, log_decay, *sizes, **meta)
    return grid, sizes, meta, _pass(local, log_decay, reverse=False), log_decay


def _causal_forward(q, k, v, g, scale, out, segment_len):
    grid, sizes, meta, states, _ = _segment_states(q, k, v, g, segment_len)
    _output_kernel[grid](q, k, v, g, states, out, scale, *sizes, num_warps=TILE_WARPS, **meta)


def _causal_backward(q, k, v, g, grad_out, scale, segment_len, grad_dtype=None):
    """dq, dk, dv, dg in the inputs' dtypes, or all in ``grad_dtype``."""
    # The segment states are recomputed (one more read of k, v, g) rather than saved, so the forward op has a single
    # output whose shape does not depend on the device.
    grid, sizes, meta, states, log_decay = _segment_states(q, k, v, g, segment_len)
    dq, dk, dv, dg = (torch.empty(t.shape, device=t.device, dtype=grad_dtype or t.dtype) for t in (q, k, v, g))
    q_dq = torch.empty(q.shape, device=q.device, dtype=torch.float32)
    dlocal = torch.empty(states.shape[0], states.shape[1] - 1, *states.shape[2:], device=q.device,
                         dtype=torch.float32)
    _dq_kernel[grid](q, k, v, g, states, grad_out, dq, q_dq, dlocal, scale, *sizes, num_warps=TILE_WARPS, **meta)
    dstates = _pass(dlocal, log_decay, reverse=True)
    # dk (and dg) and dv in two kernels, each tiled over its own head dim on grid axis 2: a single kernel holding
    # both [BT, BT, Dk] products and the whole dS spilled (see DK_TILE_ELEMENTS). Both recompute the dS walk.
    key_block = min(meta['BK'], DK_TILE_ELEMENTS // meta['BV'])
    _dk_kernel[(*grid, triton.cdiv(meta['DK'], key_block))](
        q, k, v, g, states, dstates, grad_out, q_dq, dk, dg, scale, *sizes, num_warps=TILE_WARPS,
        **dict(meta, BK=key_block))
    value_block = min(meta['BV'], DV_TILE_ELEMENTS // meta['BK'])
    _dv_kernel[(*grid, triton.cdiv(meta['DV'], value_block))](
        q, k, g, dstates, grad_out, dv, scale, *sizes, num_warps=TILE_WARPS, **dict(meta, BV=value_block))
    return dq, dk, dv, dg


def _hw(height, width):
    return (height, width) if height > 0 else None


# Non-causal directions: the routes are stacked along the batch (exact copies) and run as one causal launch group;
# mapping the route outputs and gradients back, summing them and removing the extra current-token terms happen in
# float32, with one rounding to the caller's dtype at the end (per-route 16-bit gradients summed in 16 bits miss the
# fp16 tolerance).
def _forward(q, k, v, g, scale, direction, hw, segment_len):
    route_list = routes(direction, hw)
    if len(route_list) == 1:
        out = torch.empty(v.shape, device=v.device, dtype=v.dtype)
        _causal_forward(q, k, v, g, scale, out, segment_len)
        return out
    stacked = [stack_routes(x, route_list) for x in (q, k, v)] + [stack_routes(g, route_list, gates=True)]
    out = torch.empty(stacked[2].shape, device=v.device, dtype=torch.float32)
    _causal_forward(*stacked, scale, out, segment_len)
    out = merge_routes(out, route_list, q.shape[0])
    current = scale * (q.float() * k.float()).sum(-1, keepdim=True) * v.float()
    return (out - (len(route_list) - 1) * current).to(v.dtype)


def _backward(q, k, v, g, grad_out, scale, direction, hw, segment_len):
    route_list = routes(direction, hw)
    if len(route_list) == 1:
        return _causal_backward(q, k, v, g, grad_out, scale, segment_len)
    stacked = [stack_routes(x, route_list) for x in (q, k, v)] + [stack_routes(g, route_list, gates=True)]
    grads = _causal_backward(*stacked, stack_routes(grad_out, route_list), scale, segment_len, torch.float32)
    batch = q.shape[0]
    dq, dk, dv = (merge_routes(grad, route_list, batch) for grad in grads[:3])
    dg = merge_routes(grads[3], route_list, batch, gates=True)
    dtypes = [t.dtype for t in (q, k, v, g)]
    q, k, v, grad_out = (t.float() for t in (q, k, v, grad_out))
    extra = (len(route_list) - 1) * scale
    grad_v_dot = (grad_out * v).sum(-1, keepdim=True)
    dq = dq - extra * grad_v_dot * k
    dk = dk - extra * grad_v_dot * q
    dv = dv - extra * (q * k).sum(-1, keepdim=True) * grad_out
    return tuple(grad.to(dtype) for grad, dtype in zip((dq, dk, dv, dg), dtypes))


@torch.library.custom_op('mlla_mm::forget_gate_fwd', mutates_args=())
def _forget_gate_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float, direction: str,
                     height: int, width: int, segment_len: int) -> torch.Tensor:
    return _forward(q, k, v, g, scale, direction, _hw(height, width), segment_len)


@_forget_gate_fwd.register_fake
def _(q, k, v, g, scale, direction, height, width, segment_len):
    return torch.empty_like(v)


@torch.library.custom_op('mlla_mm::forget_gate_bwd', mutates_args=())
def _forget_gate_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, grad_out: torch.Tensor,
                     scale: float, direction: str, height: int, width: int, segment_len: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(q, k, v, g, grad_out, scale, direction, _hw(height, width), segment_len)


@_forget_gate_bwd.register_fake
def _(q, k, v, g, grad_out, scale, direction, height, width, segment_len):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(g)


def _setup_context(ctx, inputs, output):
    q, k, v, g, *ctx.arguments = inputs
    ctx.save_for_backward(q, k, v, g)


def _backward_rule(ctx, grad_out):
    q, k, v, g = ctx.saved_tensors
    grads = _forget_gate_bwd(q, k, v, g, grad_out.contiguous(), *ctx.arguments)
    return (*grads, None, None, None, None, None)


_forget_gate_fwd.register_autograd(_backward_rule, setup_context=_setup_context)


def forget_gate_triton(q, k, v, g, scale=1.0, direction='causal', hw=None, segment_len=0):
    """The Triton backend; same arguments and result as ``forget_gate_attention`` (without its checks).

    ``segment_len`` > 0 (a multiple of 16) overrides the segment length, which tests use to cover several segments
    on short sequences.
    """
    q, k, v, g = (t.contiguous() for t in (q, k, v, g))
    height, width = hw if hw is not None else (0, 0)
    return _forget_gate_fwd(q, k, v, g, float(scale), direction, height, width, segment_len)
