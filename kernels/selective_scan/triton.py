"""S6 selective scan in Triton: chunk kernels, a state-passing kernel, launchers, and torch custom ops with autograd.

The sequence is cut into chunks of BLOCK_L tokens, and one program takes one chunk of BLOCK_D channels of one sample
(all in one B/C group), so the grid is batch * dim / BLOCK_D * n_chunks programs: it grows with the image, not only
with the batch. Inside a program the tile is 2-D, [BLOCK_D * BLOCK_N rows (channel, state), BLOCK_L tokens], and the
recurrence h_t = a_t h_{t-1} + b_t runs as a forward-order ``tl.associative_scan`` along the tokens (the only form
triton tests for a non-commutative combine; no reverse scan anywhere). The state is float32 whatever the input dtype.

Forward, three launches:
  1. chunk summary: each chunk's decay product and its end state from a zero start;
  2. state passing: a forward scan over the chunk summaries (blocks of BLOCK_C chunks in a loop, the running state
     carried between blocks) gives the state entering every chunk ([batch * dim * N, n_chunks] float32; saved for the
     backward);
  3. chunk output: the scan again, seeded with the entering state, and y = C . h + D u.
Backward, three launches, the adjoint g_t = a_{t+1} g_{t+1} + dy_t C_t being a suffix recurrence:
  1. chunk summary of the adjoint: tokens are loaded in reversed order, so a forward scan computes the suffix;
  2. the same state-passing kernel, walking the chunks from the last: the adjoint entering every chunk from its right;
  3. chunk gradients: h is recomputed in token order from the saved entering state, a_t h_{t-1} = h_t - b_t is
     flipped (``tl.flip``) into the reversed order of the adjoint, and du, d(delta) are stored at reversed indices.
Reductions are deterministic (no atomics): dB and dC are summed over the program's channels in registers and written
as per-channel-block partials [blocks per group, batch, G, N, L]; dA, dD and d(delta_bias) as per-chunk partials.
The partials are then summed by torch in a fixed order, so two backward runs give bit-identical gradients.

Sizes (dim, L, N, n_chunks, ...) are runtime arguments in ``do_not_specialize``. The constexpr block sizes depend only
on the model (d_state and the group width), never on the input size, so a new H x W never recompiles.
"""
import os
from typing import Optional

import torch
import triton
import triton.language as tl

MAX_D_STATE = 16
INTERPRETER_BLOCK_L = 32
TILE_ELEMENTS = 2048  # rows x tokens per program on a GPU
MAX_BLOCK_D = 8
BLOCK_ROWS_PASS = 16
GRADIENT_WARPS = 8  # the gradient kernel holds ~12 live tiles: 8 warps keep it under 255 registers, unspilled
BLOCK_CHUNKS_PASS = 64

CHUNK_SIZES = ('batch_size', 'dim', 'dim_per_group', 'length', 'n_state', 'n_chunks')


@triton.jit
def _combine(decay_left, value_left, decay_right, value_right):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
    return decay_left * decay_right, decay_right * value_left + value_right


@triton.jit
def _delta_to_dt(raw, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    if HAS_BIAS:
        raw = raw + bias
    if SOFTPLUS:
        # Mamba's threshold: softplus(x) = x above 20, where log(1 + exp(x)) is x in float32 anyway.
        return tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(raw))), raw
    return raw, raw


@triton.jit
def _sum_states(x, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """[BLOCK_D * BLOCK_N, BLOCK_L] rows (channel, state) -> [BLOCK_D, BLOCK_L], summed over the states."""
    if BLOCK_N == 1:
        return x
    return tl.sum(tl.reshape(x, (BLOCK_D, BLOCK_N, BLOCK_L)), axis=1)


@triton.jit
def _sum_channels(x, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """[BLOCK_D * BLOCK_N, BLOCK_L] rows (channel, state) -> [BLOCK_N, BLOCK_L], summed over the channels."""
    if BLOCK_D == 1:
        return x
    return tl.sum(tl.reshape(x, (BLOCK_D, BLOCK_N, BLOCK_L)), axis=0)


@triton.jit
def _last_column(x, BLOCK_L: tl.constexpr):
    return tl.sum(tl.where(tl.arange(0, BLOCK_L)[None, :] == BLOCK_L - 1, x, 0.0), axis=1)


@triton.jit
def _block_layout(dim, dim_per_group, length, n_state, n_chunks, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """The program's chunk and channel block, and where its rows (channel, state) start in each tensor: int64
    scalar bases and int32 offsets inside the block (BLOCK_D * L and N * L fit in int32), so the tiles of
    addresses stay 32-bit."""
    pid = tl.program_id(0)
    chunk = pid % n_chunks
    block = pid // n_chunks                     # batch * (dim / BLOCK_D) + channel block
    blocks_per_row = dim // BLOCK_D
    batch = block // blocks_per_row
    first_channel = (block % blocks_per_row) * BLOCK_D
    group = first_channel // dim_per_group
    rows = tl.arange(0, BLOCK_D * BLOCK_N)
    local_channels = rows // BLOCK_N
    states = rows % BLOCK_N
    seq_base = (batch * dim + first_channel).to(tl.int64) * length               # u, delta, y, dy, du, ddelta
    bc_base = (batch * (dim // dim_per_group) + group).to(tl.int64) * n_state * length   # B, C
    return chunk, batch, first_channel, group, local_channels, states, seq_base, bc_base


@triton.jit
def _load_dt(delta_ptr, offsets, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Time steps (0 where masked: decay 1, input 0, the identity) and the pre-softplus values."""
    dt, pre = _delta_to_dt(tl.load(delta_ptr + offsets, mask=mask, other=0.0).to(tl.float32), bias,
                           HAS_BIAS, SOFTPLUS)
    return tl.where(mask, dt, 0.0), pre


@triton.jit(do_not_specialize=CHUNK_SIZES)
def _scan_fwd_chunk_kernel(
        u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, y_ptr, states_ptr, chunk_decay_ptr, chunk_end_ptr,
        batch_size, dim, dim_per_group, length, n_state, n_chunks,
        OUTPUT: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """OUTPUT=False: store each chunk's decay product and end state (zero start). OUTPUT=True: store y."""
    chunk, batch, first_channel, group, local_channels, states, seq_base, bc_base = _block_layout(
        dim, dim_per_group, length, n_state, n_chunks, BLOCK_D, BLOCK_N)
    row_mask = states < n_state
    state_base = (batch * dim + first_channel).to(tl.int64) * n_state * n_chunks   # [batch * dim * N, n_chunks]
    state_offsets = (local_channels * n_state + states) * n_chunks + chunk
    a = tl.load(a_ptr + (first_channel + local_channels) * n_state + states, mask=row_mask, other=0.0)[:, None]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + first_channel + local_channels)[:, None]
    else:
        bias = 0.0

    tokens = chunk * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = row_mask[:, None] & (tokens < length)[None, :]
    seq_offsets = (local_channels * length)[:, None] + tokens[None, :]
    bc_offsets = (states * length)[:, None] + tokens[None, :]
    u = tl.load(u_ptr + seq_base + seq_offsets, mask=mask, other=0.0).to(tl.float32)
    dt, _ = _load_dt(delta_ptr + seq_base, seq_offsets, mask, bias, HAS_BIAS, SOFTPLUS)
    b = tl.load(b_ptr + bc_base + bc_offsets, mask=mask, other=0.0).to(tl.float32)
    decay_prefix, h = tl.associative_scan((tl.exp(dt * a), b * (dt * u)), axis=1, combine_fn=_combine)
    if OUTPUT:
        h_in = tl.load(states_ptr + state_base + state_offsets, mask=row_mask, other=0.0)
        h = h + decay_prefix * h_in[:, None]
        c = tl.load(c_ptr + bc_base + bc_offsets, mask=mask, other=0.0).to(tl.float32)
        y = _sum_states(h * c, BLOCK_D, BLOCK_N, BLOCK_L)                                  # [BD, BL]
        y_offsets = (tl.arange(0, BLOCK_D) * length)[:, None] + tokens[None, :]
        y_mask = (tokens < length)[None, :]
        if HAS_D:
            if BLOCK_N == 1:
                u_channels = u                  # the rows are the channels
            else:
                u_channels = tl.load(u_ptr + seq_base + y_offsets, mask=y_mask, other=0.0).to(tl.float32)
            y += tl.load(d_ptr + first_channel + tl.arange(0, BLOCK_D))[:, None] * u_channels
        tl.store(y_ptr + seq_base + y_offsets, y.to(y_ptr.dtype.element_ty), mask=y_mask)
    else:
        tl.store(chunk_decay_ptr + state_base + state_offsets, _last_column(decay_prefix, BLOCK_L), mask=row_mask)
        tl.store(chunk_end_ptr + state_base + state_offsets, _last_column(h, BLOCK_L), mask=row_mask)


@triton.jit(do_not_specialize=('rows', 'n_chunks'))
def _state_passing_kernel(chunk_decay_ptr, chunk_end_ptr, entering_ptr, rows, n_chunks,
                          REVERSE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    """entering[r, c] = the state before chunk c (REVERSE: after it, walking from the last chunk), given each
    chunk's decay product and zero-start end state; [rows, n_chunks] float32 buffers."""
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = row < rows
    row_starts = row.to(tl.int64) * n_chunks
    row_offsets = row_starts[:, None]
    carry = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
    first = n_chunks - 1 if REVERSE else 0
    tl.store(entering_ptr + row_starts + first, carry, mask=row_mask)
    for start in range(0, n_chunks, BLOCK_C):
        order = start + tl.arange(0, BLOCK_C)                  # position in walking order
        chunk = n_chunks - 1 - order if REVERSE else order
        mask = row_mask[:, None] & (order < n_chunks)[None, :]
        # Chunks past the end are the identity (decay 1, end state 0), so the last column is the running state.
        decay = tl.load(chunk_decay_ptr + row_offsets + chunk[None, :], mask=mask, other=1.0)
        end = tl.load(chunk_end_ptr + row_offsets + chunk[None, :], mask=mask, other=0.0)
        decay, state = tl.associative_scan((decay, end), axis=1, combine_fn=_combine)
        state = state + decay * carry[:, None]                 # the state after each chunk
        following = chunk - 1 if REVERSE else chunk + 1
        tl.store(entering_ptr + row_offsets + following[None, :], state, mask=mask & (order + 1 < n_chunks)[None, :])
        carry = _last_column(state, BLOCK_C)


@triton.jit(do_not_specialize=CHUNK_SIZES)
def _scan_bwd_chunk_kernel(
        u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, dy_ptr, states_ptr, adjoint_ptr,
        chunk_decay_ptr, chunk_start_ptr, du_ptr, ddelta_ptr, da_ptr, db_ptr, dc_ptr, dd_ptr, dbias_ptr,
        batch_size, dim, dim_per_group, length, n_state, n_chunks,
        GRADIENTS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """GRADIENTS=False: store each chunk's adjoint summary (product of a_{t+1} over the chunk, adjoint at its first
    token from a zero right end). GRADIENTS=True: all gradients (partials for dA, dB, dC, dD, d(delta_bias))."""
    chunk, batch, first_channel, group, local_channels, states, seq_base, bc_base = _block_layout(
        dim, dim_per_group, length, n_state, n_chunks, BLOCK_D, BLOCK_N)
    row_mask = states < n_state
    state_base = (batch * dim + first_channel).to(tl.int64) * n_state * n_chunks
    state_offsets = (local_channels * n_state + states) * n_chunks + chunk
    a = tl.load(a_ptr + (first_channel + local_channels) * n_state + states, mask=row_mask, other=0.0)[:, None]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + first_channel + local_channels)[:, None]
    else:
        bias = 0.0
    # Partials of dB, dC: [blocks per group, batch, G, N, L], this block's row.
    block_in_group = (first_channel % dim_per_group) // BLOCK_D
    part_base = ((block_in_group * batch_size + batch) * (dim // dim_per_group) + group).to(tl.int64) \
        * n_state * length
    part_states = tl.arange(0, BLOCK_N)

    if GRADIENTS:
        # h in token order, recomputed from the state entering the chunk.
        tokens = chunk * BLOCK_L + tl.arange(0, BLOCK_L)
        mask = row_mask[:, None] & (tokens < length)[None, :]
        seq_offsets = (local_channels * length)[:, None] + tokens[None, :]
        u = tl.load(u_ptr + seq_base + seq_offsets, mask=mask, other=0.0).to(tl.float32)
        dt, _ = _load_dt(delta_ptr + seq_base, seq_offsets, mask, bias, HAS_BIAS, SOFTPLUS)
        inputs = tl.load(b_ptr + bc_base + (states * length)[:, None] + tokens[None, :], mask=mask,
                         other=0.0).to(tl.float32) * (dt * u)
        decay_prefix, h = tl.associative_scan((tl.exp(dt * a), inputs), axis=1, combine_fn=_combine)
        h_in = tl.load(states_ptr + state_base + state_offsets, mask=row_mask, other=0.0)
        h = h + decay_prefix * h_in[:, None]
        # dC_t = sum over the group's channels of dy_t h_t: this block's share, in token order.
        dy = tl.load(dy_ptr + seq_base + seq_offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(dc_ptr + part_base + (part_states * length)[:, None] + tokens[None, :],
                 _sum_channels(dy * h, BLOCK_D, BLOCK_N, BLOCK_L),
                 mask=(part_states < n_state)[:, None] & (tokens < length)[None, :])
        # a_t h_{t-1} = h_t - input_t (no division by a_t, which may underflow to 0), in the adjoint's order.
        decayed = tl.flip(h - inputs, 1)

    # The adjoint in reversed token order: column j is token chunk * BLOCK_L + BLOCK_L - 1 - j.
    reversed_tokens = chunk * BLOCK_L + BLOCK_L - 1 - tl.arange(0, BLOCK_L)
    mask_r = row_mask[:, None] & (reversed_tokens < length)[None, :]
    seq_r = (local_channels * length)[:, None] + reversed_tokens[None, :]
    bc_r = (states * length)[:, None] + reversed_tokens[None, :]
    dy_r = tl.load(dy_ptr + seq_base + seq_r, mask=mask_r, other=0.0).to(tl.float32)
    c_r = tl.load(c_ptr + bc_base + bc_r, mask=mask_r, other=0.0).to(tl.float32)
    # a_{t+1} from the next token's delta; 1 past the end of the sequence (where the adjoint is 0 anyway).
    next_mask = row_mask[:, None] & (reversed_tokens + 1 < length)[None, :]
    dt_next, _ = _load_dt(delta_ptr + seq_base + 1, seq_r, next_mask, bias, HAS_BIAS, SOFTPLUS)
    suffix_decay, g = tl.associative_scan((tl.exp(dt_next * a), dy_r * c_r), axis=1, combine_fn=_combine)
    if not GRADIENTS:
        tl.store(chunk_decay_ptr + state_base + state_offsets, _last_column(suffix_decay, BLOCK_L), mask=row_mask)
        tl.store(chunk_start_ptr + state_base + state_offsets, _last_column(g, BLOCK_L), mask=row_mask)
    else:
        g_right = tl.load(adjoint_ptr + state_base + state_offsets, mask=row_mask, other=0.0)
        g = g + suffix_decay * g_right[:, None]
        decayed = decayed * g                                                         # a_t h_{t-1} g_t
        u_r = tl.load(u_ptr + seq_base + seq_r, mask=mask_r, other=0.0).to(tl.float32)
        dt_r, pre_r = _load_dt(delta_ptr + seq_base, seq_r, mask_r, bias, HAS_BIAS, SOFTPLUS)
        tl.store(db_ptr + part_base + (part_states * length)[:, None] + reversed_tokens[None, :],
                 _sum_channels(g * (dt_r * u_r), BLOCK_D, BLOCK_N, BLOCK_L),
                 mask=(part_states < n_state)[:, None] & (reversed_tokens < length)[None, :])
        # dA partials [n_chunks, batch * dim * N]
        da_base = (chunk.to(tl.int64) * batch_size * dim + batch * dim + first_channel) * n_state
        tl.store(da_ptr + da_base + local_channels * n_state + states, tl.sum(decayed * dt_r, axis=1), mask=row_mask)
        b_r = tl.load(b_ptr + bc_base + bc_r, mask=mask_r, other=0.0).to(tl.float32)
        gb = _sum_states(g * b_r, BLOCK_D, BLOCK_N, BLOCK_L)                              # [BD, BL]
        ddt_state = _sum_states(decayed * a, BLOCK_D, BLOCK_N, BLOCK_L)

        # Per-channel gradients, [BLOCK_D, BLOCK_L] in reversed token order.
        channel_mask = (reversed_tokens < length)[None, :]
        if BLOCK_N == 1:
            u_c, dt_c, pre_c, dy_c = u_r, dt_r, pre_r, dy_r        # the rows are the channels
        else:
            channel_offsets = (tl.arange(0, BLOCK_D) * length)[:, None] + reversed_tokens[None, :]
            if HAS_BIAS:
                bias_c = tl.load(bias_ptr + first_channel + tl.arange(0, BLOCK_D))[:, None]
            else:
                bias_c = 0.0
            u_c = tl.load(u_ptr + seq_base + channel_offsets, mask=channel_mask, other=0.0).to(tl.float32)
            dt_c, pre_c = _load_dt(delta_ptr + seq_base, channel_offsets, channel_mask, bias_c, HAS_BIAS, SOFTPLUS)
            dy_c = tl.load(dy_ptr + seq_base + channel_offsets, mask=channel_mask, other=0.0).to(tl.float32)
        du = gb * dt_c
        ddt = gb * u_c + ddt_state
        # dD and d(delta_bias) partials [n_chunks, batch * dim]
        partial_offsets = chunk.to(tl.int64) * batch_size * dim + batch * dim + first_channel \
            + tl.arange(0, BLOCK_D)
        if HAS_D:
            du += tl.load(d_ptr + first_channel + tl.arange(0, BLOCK_D))[:, None] * dy_c
            tl.store(dd_ptr + partial_offsets, tl.sum(dy_c * u_c, axis=1))
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(pre_c)
        ddt = tl.where(channel_mask, ddt, 0.0)
        if HAS_BIAS:
            tl.store(dbias_ptr + partial_offsets, tl.sum(ddt, axis=1))
        channel_out = (tl.arange(0, BLOCK_D) * length)[:, None] + reversed_tokens[None, :]
        tl.store(du_ptr + seq_base + channel_out, du.to(du_ptr.dtype.element_ty), mask=channel_mask)
        tl.store(ddelta_ptr + seq_base + channel_out, ddt.to(ddelta_ptr.dtype.element_ty), mask=channel_mask)


def _interpreted():
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def block_sizes(dim_per_group, n_state, block_l=0, interpreted=None):
    """The constexpr blocks for a model: BLOCK_N = d_state rounded up to a power of 2; BLOCK_D channels per program
    (the largest power of 2 up to 8 dividing the group width, fewer when d_state is large); BLOCK_L tokens per chunk
    (TILE_ELEMENTS / rows on a GPU, INTERPRETER_BLOCK_L under the interpreter, or ``block_l`` when given)."""
    block_n = triton.next_power_of_2(n_state)
    block_d = 1
    while (block_d < MAX_BLOCK_D and dim_per_group % (2 * block_d) == 0
           and 2 * block_d * block_n * 32 <= TILE_ELEMENTS):
        block_d *= 2
    if not block_l:
        interpreted = _interpreted() if interpreted is None else interpreted
        block_l = INTERPRETER_BLOCK_L if interpreted else max(16, TILE_ELEMENTS // (block_d * block_n))
    return dict(BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_L=block_l)


def launch_grid(batch, dim, groups, n_state, length, block_l=0, interpreted=None):
    """(programs of each chunk kernel, programs of the state-passing kernel, n_chunks) for these sizes."""
    blocks = block_sizes(dim // groups, n_state, block_l, interpreted)
    n_chunks = triton.cdiv(length, blocks['BLOCK_L'])
    return batch * dim // blocks['BLOCK_D'] * n_chunks, triton.cdiv(batch * dim * n_state, BLOCK_ROWS_PASS), n_chunks


def _pass_states(chunk_decay, chunk_values, reverse):
    rows, n_chunks = chunk_decay.shape
    entering = torch.empty_like(chunk_decay)
    _state_passing_kernel[(triton.cdiv(rows, BLOCK_ROWS_PASS),)](
        chunk_decay, chunk_values, entering, rows, n_chunks,
        REVERSE=reverse, BLOCK_ROWS=BLOCK_ROWS_PASS, BLOCK_C=BLOCK_CHUNKS_PASS)
    return entering


def _optional(t, stand_in):
    return t if t is not None else stand_in


def _n_chunks(length, dim_per_group, n_state, block_l):
    block = block_sizes(dim_per_group, n_state, block_l)['BLOCK_L']
    return (length + block - 1) // block


# Custom ops (kernels/backend.py explains the pattern). ``block_l`` 0 means the default chunk length.
@torch.library.custom_op('mlla_mm::selective_scan_fwd', mutates_args=())
def _scan_fwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool,
                 output_fp32: bool, block_l: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns y and the float32 state entering every chunk, [batch * dim * N, n_chunks] (for the backward)."""
    u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
    D, delta_bias = (t.contiguous() if t is not None else None for t in (D, delta_bias))
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    blocks = block_sizes(dim // groups, n_state, block_l)
    programs, _, n_chunks = launch_grid(batch, dim, groups, n_state, length, block_l)
    y = torch.empty_like(u, dtype=torch.float32 if output_fp32 else u.dtype)
    chunk_decay = torch.empty(batch * dim * n_state, n_chunks, device=u.device, dtype=torch.float32)
    chunk_end = torch.empty_like(chunk_decay)
    args = (u, delta, A, B, C, _optional(D, A), _optional(delta_bias, A), y)
    sizes = (batch, dim, dim // groups, length, n_state, n_chunks)
    flags = dict(HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, **blocks)
    _scan_fwd_chunk_kernel[(programs,)](*args, chunk_decay, chunk_decay, chunk_end, *sizes, OUTPUT=False, **flags)
    states = _pass_states(chunk_decay, chunk_end, reverse=False)
    _scan_fwd_chunk_kernel[(programs,)](*args, states, chunk_decay, chunk_end, *sizes, OUTPUT=True, **flags)
    return y, states


@_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, output_fp32, block_l):
    batch, dim, length = u.shape
    n_chunks = _n_chunks(length, dim // B.shape[1], B.shape[2], block_l)
    y = torch.empty_like(u, dtype=torch.float32 if output_fp32 else u.dtype, memory_format=torch.contiguous_format)
    return y, u.new_empty(batch * dim * B.shape[2], n_chunks, dtype=torch.float32)


@torch.library.custom_op('mlla_mm::selective_scan_bwd', mutates_args=())
def _scan_bwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], states: torch.Tensor,
                 dy: torch.Tensor, delta_softplus: bool, block_l: int) -> list[torch.Tensor]:
    """Returns [du, ddelta, dA, dB, dC, dD, d(delta_bias)]; dD and d(delta_bias) are empty when D / delta_bias are
    None. dA, dD and d(delta_bias) are float32, the others in their input's dtype."""
    u, delta, A, B, C, dy = (t.contiguous() for t in (u, delta, A, B, C, dy))
    D, delta_bias = (t.contiguous() if t is not None else None for t in (D, delta_bias))
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    blocks = block_sizes(dim // groups, n_state, block_l)
    programs, _, n_chunks = launch_grid(batch, dim, groups, n_state, length, block_l)
    f32 = dict(device=u.device, dtype=torch.float32)
    blocks_per_group = dim // groups // blocks['BLOCK_D']
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    da = torch.empty(n_chunks, batch, dim, n_state, **f32)
    db = torch.empty(blocks_per_group, *B.shape, **f32)
    dc = torch.empty(blocks_per_group, *C.shape, **f32)
    dd = torch.empty(n_chunks, batch, dim, **f32) if D is not None else None
    dbias = torch.empty(n_chunks, batch, dim, **f32) if delta_bias is not None else None
    chunk_decay = torch.empty(batch * dim * n_state, n_chunks, **f32)
    chunk_start = torch.empty_like(chunk_decay)
    inputs = (u, delta, A, B, C, _optional(D, A), _optional(delta_bias, A), dy, states)
    outputs = (du, ddelta, da, db, dc, _optional(dd, da), _optional(dbias, da))
    sizes = (batch, dim, dim // groups, length, n_state, n_chunks)
    flags = dict(HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, **blocks)
    _scan_bwd_chunk_kernel[(programs,)](*inputs, chunk_decay, chunk_decay, chunk_start, *outputs, *sizes,
                                        GRADIENTS=False, **flags)
    adjoint = _pass_states(chunk_decay, chunk_start, reverse=True)
    _scan_bwd_chunk_kernel[(programs,)](*inputs, adjoint, chunk_decay, chunk_start, *outputs, *sizes,
                                        GRADIENTS=True, num_warps=GRADIENT_WARPS, **flags)
    # Fixed-order sums of the partials: deterministic, unlike float atomics.
    return [du, ddelta, da.sum((0, 1)), db.sum(0).to(B.dtype), dc.sum(0).to(C.dtype),
            dd.sum((0, 1)) if dd is not None else u.new_empty(0, dtype=torch.float32),
            dbias.sum((0, 1)) if dbias is not None else u.new_empty(0, dtype=torch.float32)]


@_scan_bwd_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, states, dy, delta_softplus, block_l):
    f32 = dict(dtype=torch.float32)
    return [torch.empty_like(u, memory_format=torch.contiguous_format),
            torch.empty_like(delta, memory_format=torch.contiguous_format), A.new_empty(A.shape, **f32),
            B.new_empty(B.shape), C.new_empty(C.shape),
            u.new_empty(D.shape if D is not None else (0,), **f32),
            u.new_empty(delta_bias.shape if delta_bias is not None else (0,), **f32)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, delta_softplus, _, block_l = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, output[1])
    ctx.delta_softplus = delta_softplus
    ctx.block_l = block_l


def _backward(ctx, dy, _):
    u, delta, A, B, C, D, delta_bias, states = ctx.saved_tensors
    du, ddelta, da, db, dc, dd, dbias = _scan_bwd_op(u, delta, A, B, C, D, delta_bias, states, dy,
                                                     ctx.delta_softplus, ctx.block_l)
    return (du, ddelta, da, db, dc, dd if D is not None else None, dbias if delta_bias is not None else None,
            None, None, None)


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_triton(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, output_fp32=False,
                          block_l=None):
    """Triton S6 scan; same arguments and result as ``selective_scan_reference``. A, D and delta_bias must be
    float32 (the public ``selective_scan`` casts them). ``block_l`` (a power of 2) overrides the chunk length,
    which tests use to cover several chunks on short sequences."""
    if A.shape[1] > MAX_D_STATE:
        raise ValueError(f'selective_scan: the Triton kernel supports d_state 1..{MAX_D_STATE}, got '
                         f'{A.shape[1]}; use backend="torch"')
    return _scan_fwd_op(u, delta, A, B, C, D, delta_bias, delta_softplus, output_fp32, block_l or 0)[0]
