"""S6 selective scan in Triton: forward and backward kernels, launchers and the autograd.Function.

One program takes BLOCK_D channels of one sample, all in the same B/C group, and walks the sequence in chunks of
BLOCK_L tokens. Inside a chunk the recurrence h_t = a_t h_{t-1} + b_t runs as ``tl.associative_scan`` over (a, b)
pairs on [BLOCK_D, BLOCK_N, BLOCK_L] tiles, seeded with the state carried from the previous chunk; the state stays
in float32 whatever the input dtype, and B and C are loaded once for the block's channels. The forward stores the
state entering every chunk ([batch * dim, n_chunks, N], float32, small), so the backward can recompute h chunk by
chunk while it walks the chunks in reverse, running the adjoint recurrence g_t = a_{t+1} g_{t+1} + dy_t C_t with a
reverse associative scan. dB and dC are sums over the channels of a group: summed over the block in registers,
then float32 atomics into [batch, G, N, L] buffers. dA, dD and d(delta_bias) are per-channel partial sums, reduced
over the batch on the host.

Sizes (batch, dim, L, number of chunks) are runtime arguments. The constexpr block sizes depend only on the model
(d_state and the group width), never on the input size, so a new H x W never recompiles.
"""
import os

import torch
import triton
import triton.language as tl

MAX_D_STATE = 16
INTERPRETER_BLOCK_L = 32


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
def _selective_scan_fwd_kernel(
        u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, y_ptr, states_ptr,
        dim, dim_per_group, length, n_state, n_chunks,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    pid = tl.program_id(0)  # batch * (dim / BLOCK_D) + channel block; a block lies inside one B/C group
    blocks_per_row = dim // BLOCK_D
    batch = pid // blocks_per_row
    channels = (pid % blocks_per_row) * BLOCK_D + tl.arange(0, BLOCK_D)
    rows = (batch * dim + channels).to(tl.int64)                                     # [BD] rows of u, delta, y
    group = (pid % blocks_per_row) * BLOCK_D // dim_per_group
    bc_base = (batch * (dim // dim_per_group) + group).to(tl.int64) * n_state * length

    states = tl.arange(0, BLOCK_N)
    state_mask = states[None, :] < n_state
    a = tl.load(a_ptr + channels[:, None] * n_state + states[None, :], mask=state_mask, other=0.0)  # [BD, BN]
    states_offsets = rows[:, None] * n_chunks * n_state + states[None, :]
    if HAS_D:
        d_skip = tl.load(d_ptr + channels)[:, None]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channels)[:, None]
    else:
        bias = 0.0
    last_column = tl.arange(0, BLOCK_L)[None, None, :] == BLOCK_L - 1

    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for chunk in range(0, n_chunks):
        tokens = chunk * BLOCK_L + tl.arange(0, BLOCK_L)
        token_mask = (tokens < length)[None, :]
        seq_offsets = rows[:, None] * length + tokens[None, :]                          # [BD, BL]
        bc_offsets = bc_base + states[:, None] * length + tokens[None, :]              # [BN, BL]
        bc_mask = (states[:, None] < n_state) & token_mask
        u = tl.load(u_ptr + seq_offsets, mask=token_mask, other=0.0).to(tl.float32)
        raw = tl.load(delta_ptr + seq_offsets, mask=token_mask, other=0.0).to(tl.float32)
        dt, _ = _delta_to_dt(raw, bias, HAS_BIAS, SOFTPLUS)
        # Padding tokens get dt = 0, i.e. decay 1 and input 0: the identity, so the state passes through.
        dt = tl.where(token_mask, dt, 0.0)
        b = tl.load(b_ptr + bc_offsets, mask=bc_mask, other=0.0).to(tl.float32)
        c = tl.load(c_ptr + bc_offsets, mask=bc_mask, other=0.0).to(tl.float32)

        tl.store(states_ptr + states_offsets + chunk * n_state, h, mask=state_mask)
        decay = tl.exp(dt[:, None, :] * a[:, :, None])                                  # [BD, BN, BL]
        decay_prefix, h_tile = tl.associative_scan((decay, b[None, :, :] * (dt * u)[:, None, :]), axis=2,
                                                   combine_fn=_combine)
        h_tile = h_tile + decay_prefix * h[:, :, None]
        y = tl.sum(h_tile * c[None, :, :], axis=1)                                       # [BD, BL]
        if HAS_D:
            y = y + d_skip * u
        tl.store(y_ptr + seq_offsets, y.to(y_ptr.dtype.element_ty), mask=token_mask)
        h = tl.sum(tl.where(last_column, h_tile, 0.0), axis=2)


@triton.jit
def _selective_scan_bwd_kernel(
        u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, dy_ptr, states_ptr,
        du_ptr, ddelta_ptr, da_ptr, db_ptr, dc_ptr, dd_ptr, dbias_ptr,
        dim, dim_per_group, length, n_state, n_chunks,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    pid = tl.program_id(0)
    blocks_per_row = dim // BLOCK_D
    batch = pid // blocks_per_row
    channels = (pid % blocks_per_row) * BLOCK_D + tl.arange(0, BLOCK_D)
    rows = (batch * dim + channels).to(tl.int64)
    group = (pid % blocks_per_row) * BLOCK_D // dim_per_group
    bc_base = (batch * (dim // dim_per_group) + group).to(tl.int64) * n_state * length

    states = tl.arange(0, BLOCK_N)
    state_mask = states[None, :] < n_state
    a = tl.load(a_ptr + channels[:, None] * n_state + states[None, :], mask=state_mask, other=0.0)
    states_offsets = rows[:, None] * n_chunks * n_state + states[None, :]
    if HAS_D:
        d_skip = tl.load(d_ptr + channels)[:, None]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channels)[:, None]
    else:
        bias = 0.0
    first_column = tl.arange(0, BLOCK_L)[None, None, :] == 0

    g_next = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)  # dL/dh at the first token of the following chunk
    da_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dd_acc = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
    for step in range(0, n_chunks):
        chunk = n_chunks - 1 - step
        tokens = chunk * BLOCK_L + tl.arange(0, BLOCK_L)
        token_mask = (tokens < length)[None, :]
        seq_offsets = rows[:, None] * length + tokens[None, :]
        bc_offsets = bc_base + states[:, None] * length + tokens[None, :]
        bc_mask = (states[:, None] < n_state) & token_mask
        u = tl.load(u_ptr + seq_offsets, mask=token_mask, other=0.0).to(tl.float32)
        raw = tl.load(delta_ptr + seq_offsets, mask=token_mask, other=0.0).to(tl.float32)
        dt, pre = _delta_to_dt(raw, bias, HAS_BIAS, SOFTPLUS)
        dt = tl.where(token_mask, dt, 0.0)
        dy = tl.load(dy_ptr + seq_offsets, mask=token_mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + bc_offsets, mask=bc_mask, other=0.0).to(tl.float32)
        c = tl.load(c_ptr + bc_offsets, mask=bc_mask, other=0.0).to(tl.float32)

        # Recompute h over the chunk from the stored entering state.
        h0 = tl.load(states_ptr + states_offsets + chunk * n_state, mask=state_mask, other=0.0)
        inputs = b[None, :, :] * (dt * u)[:, None, :]
        decay_prefix, h_tile = tl.associative_scan((tl.exp(dt[:, None, :] * a[:, :, None]), inputs), axis=2,
                                                   combine_fn=_combine)
        h_tile = h_tile + decay_prefix * h0[:, :, None]

        # Adjoint: g_t = a_{t+1} g_{t+1} + dy_t C_t, with a_{t+1} from the next token's delta (0 past the end).
        next_mask = (tokens + 1 < length)[None, :]
        raw_next = tl.load(delta_ptr + seq_offsets + 1, mask=next_mask, other=0.0).to(tl.float32)
        dt_next, _ = _delta_to_dt(raw_next, bias, HAS_BIAS, SOFTPLUS)
        dt_next = tl.where(next_mask, dt_next, 0.0)
        suffix_decay, g_tile = tl.associative_scan(
            (tl.exp(dt_next[:, None, :] * a[:, :, None]), dy[:, None, :] * c[None, :, :]), axis=2,
            combine_fn=_combine, reverse=True)
        g_tile = g_tile + suffix_decay * g_next[:, :, None]
        g_next = tl.sum(tl.where(first_column, g_tile, 0.0), axis=2)

        # a_t h_{t-1} = h_t - input_t: the decay gradient without a division by a_t (which may underflow to 0).
        decayed_state = (h_tile - inputs) * g_tile
        gb = tl.sum(g_tile * b[None, :, :], axis=1)                                     # [BD, BL]
        du = gb * dt
        ddt = gb * u + tl.sum(decayed_state * a[:, :, None], axis=1)
        da_acc += tl.sum(decayed_state * dt[:, None, :], axis=2)
        if HAS_D:
            du += d_skip * dy
            dd_acc += dy * u
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(pre)
        dbias_acc += ddt
        # The block's channels share B and C: sum over them here, then one atomic per (state, token).
        tl.atomic_add(db_ptr + bc_offsets, tl.sum(g_tile * (dt * u)[:, None, :], axis=0), mask=bc_mask)
        tl.atomic_add(dc_ptr + bc_offsets, tl.sum(dy[:, None, :] * h_tile, axis=0), mask=bc_mask)
        tl.store(du_ptr + seq_offsets, du.to(du_ptr.dtype.element_ty), mask=token_mask)
        tl.store(ddelta_ptr + seq_offsets, ddt.to(ddelta_ptr.dtype.element_ty), mask=token_mask)

    tl.store(da_ptr + rows[:, None] * n_state + states[None, :], da_acc, mask=state_mask)
    if HAS_D:
        tl.store(dd_ptr + rows, tl.sum(dd_acc, axis=1))
    if HAS_BIAS:
        tl.store(dbias_ptr + rows, tl.sum(dbias_acc, axis=1))


def _blocks(dim_per_group, n_state, block_l):
    block_n = triton.next_power_of_2(n_state)
    # Up to 8 channels per program, all in one B/C group (a power of 2 dividing the group size; it depends on the
    # model width only, never on the input size).
    block_d = 1
    while block_d < 8 and dim_per_group % (2 * block_d) == 0:
        block_d *= 2
    if block_l is None:
        # The interpreter runs the scan's combine as a Python loop over the chunk: short chunks keep CPU runs
        # fast. On a GPU, about 2048 state elements per tile (256 tokens for d_state 1 and 8 channels).
        interpreted = os.environ.get('TRITON_INTERPRET', '0') == '1'
        block_l = INTERPRETER_BLOCK_L if interpreted else max(16, 2048 // (block_d * block_n))
    return dict(BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_L=block_l)


def _launch_args(u, B, block_l):
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    blocks = _blocks(dim // groups, n_state, block_l)
    n_chunks = triton.cdiv(length, blocks['BLOCK_L'])
    grid = (batch * dim // blocks['BLOCK_D'],)
    return (batch, dim, length, groups, n_state, n_chunks), grid, blocks


class SelectiveScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, output_fp32, block_l):
        u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
        D, delta_bias = (t.contiguous() if t is not None else None for t in (D, delta_bias))
        (batch, dim, length, groups, n_state, n_chunks), grid, blocks = _launch_args(u, B, block_l)
        y = torch.empty_like(u, dtype=torch.float32 if output_fp32 else u.dtype)
        states = torch.empty(batch * dim, n_chunks, n_state, device=u.device, dtype=torch.float32)
        _selective_scan_fwd_kernel[grid](
            u, delta, A, B, C, D if D is not None else A, delta_bias if delta_bias is not None else A, y, states,
            dim, dim // groups, length, n_state, n_chunks,
            HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, **blocks)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, states)
        ctx.delta_softplus = delta_softplus
        ctx.block_l = block_l
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, delta_bias, states = ctx.saved_tensors
        (batch, dim, length, groups, n_state, n_chunks), grid, blocks = _launch_args(u, B, ctx.block_l)
        dy = dy.contiguous()
        du = torch.empty_like(u)
        ddelta = torch.empty_like(delta)
        da = torch.empty(batch, dim, n_state, device=u.device, dtype=torch.float32)
        db = torch.zeros(B.shape, device=u.device, dtype=torch.float32)
        dc = torch.zeros(C.shape, device=u.device, dtype=torch.float32)
        dd = torch.empty(batch, dim, device=u.device, dtype=torch.float32) if D is not None else None
        dbias = torch.empty(batch, dim, device=u.device, dtype=torch.float32) if delta_bias is not None else None
        _selective_scan_bwd_kernel[grid](
            u, delta, A, B, C, D if D is not None else A, delta_bias if delta_bias is not None else A, dy, states,
            du, ddelta, da, db, dc, dd if dd is not None else da, dbias if dbias is not None else da,
            dim, dim // groups, length, n_state, n_chunks,
            HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=ctx.delta_softplus, **blocks)
        return (du, ddelta, da.sum(0), db.to(B.dtype), dc.to(C.dtype),
                dd.sum(0) if dd is not None else None, dbias.sum(0) if dbias is not None else None,
                None, None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, output_fp32=False,
                          block_l=None):
    """Triton S6 scan; same arguments and result as ``selective_scan_reference``. A, D and delta_bias must be
    float32 (the public ``selective_scan`` casts them). ``block_l`` (a power of 2) overrides the chunk length,
    which tests use to cover several chunks on short sequences."""
    if A.shape[1] > MAX_D_STATE:
        raise ValueError(f'selective_scan: the Triton kernel supports d_state 1..{MAX_D_STATE}, got '
                         f'{A.shape[1]}; use backend="torch"')
    return SelectiveScanFunction.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, output_fp32, block_l)
