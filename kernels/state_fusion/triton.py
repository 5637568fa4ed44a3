"""Structure-aware state fusion + observation in Triton: forward and backward kernels, launchers and the custom ops.

The three dilated 3x3 kernels share their centre tap, so the fusion is a 25-tap stencil with clamped source indices
(upstream's merged 11 x 11 eval kernel, recomputed from the live parameters at every call: no cache, so training and
evaluation run the same code and always see the current weights). The per-channel tap weights are built on the host as
a [Di, 3, 9] table (alpha_k * K_k, the three centres summed into the first), a few KB.

Forward: one program per (token block, batch x channel block) computes y = (sum_t w_t h[clamp(p + o_t)]) * C + D * u
on a [BLOCK_D, BLOCK_L] tile of raster-order tokens.

Both stencil kernels loop over the 25 taps at run time, one tap's gathers live at a time, and convert 16-bit loads to
float32 where they are used: with the taps unrolled, the compiler hoisted all 25 gathers and spilled (ptxas for sm_90:
72 B in the 16-bit forward, over 9 KB in the float32 / float16 backward).

Backward, with g = dy * C:
- ``_state_fusion_bwd_kernel`` (one program per (split, batch x channel block), walking the token blocks
  split, split + n_splits, ...): du = D * dy; per-channel partial sums of dD = sum dy * u and of the tap gradients
  dw_t = sum g * h[clamp(p + o_t)]; per-token partial sums of dC = sum over channels of dy * h', one row per channel
  block; and
  dh for every pixel off the border, where the adjoint of a clamped stencil is the plain gather sum_t w_t g[q - o_t].
- ``_state_fusion_border_bwd_kernel`` (one program per block of border pixels): dh on the first/last row and column,
  where clamping folds every tap that left the map onto the border. Clamping is separable, so the sources of target
  q through tap (dr, dc) are a rectangle: rows {r : clamp(r + dr) = q_row} (an interval of at most |dr| + 1 rows)
  times the matching columns; the kernel sums g over it (runtime loops over the taps: few pixels, short code).
Each pixel is written by exactly one program of one kernel, so dh needs no atomics and no zero fill.
The host reduces the partial sums in a fixed order (no atomics anywhere: the gradients are deterministic) and applies
the chain rule to the three kernels and alpha.

Sizes (channels, H, W, L, number of border pixels, splits) are runtime arguments listed in ``do_not_specialize``; the
block sizes are fixed, so a new H x W never recompiles.
"""
import os

import torch
import triton
import triton.language as tl

TAPS = 27  # 3 kernels x 9 taps; the centres of kernels 1 and 2 are folded into kernel 0's and skipped (25 used)
MAX_SPLITS = 16
SIZES = ('channels', 'height', 'width', 'length')


@triton.jit
def _tap(tap):
    # Tap ``tap`` of the 25 (kernel 0's nine, then the eight off-centre taps of kernels 1 and 2, each in raster
    # order, as the unfused sum): its column k * 9 + i * 3 + j in the weight table and its offset
    # (i - 1, j - 1) * (2k + 1).
    k = tl.where(tap < 9, 0, (tap - 1) // 8)
    position = tl.where(tap < 9, tap, (tap - 1) % 8)
    position += (k > 0) & (position >= 4)  # step over the centre, whose weight kernel 0 carries
    dilation = 2 * k + 1
    return k * 9 + position, (position // 3 - 1) * dilation, (position % 3 - 1) * dilation


@triton.jit
def _clamped_source(row, col, row_offset, col_offset, height, width):
    # The pixel a tap reads, clamped into the map (replicate padding), as a raster index.
    return (tl.minimum(tl.maximum(row + row_offset, 0), height - 1) * width
            + tl.minimum(tl.maximum(col + col_offset, 0), width - 1))


@triton.jit(do_not_specialize=SIZES)
def _state_fusion_fwd_kernel(h_ptr, w_ptr, c_ptr, d_ptr, u_ptr, y_ptr, channels, height, width, length,
                             BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    n_channel_blocks = tl.cdiv(channels, BLOCK_D)
    batch = tl.program_id(1) // n_channel_blocks
    channel = (tl.program_id(1) % n_channel_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    channel_mask = channel < channels
    tokens = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    token_mask = tokens < length
    mask = channel_mask[:, None] & token_mask[None, :]
    row = tokens // width
    col = tokens % width
    planes = ((batch * channels + channel).to(tl.int64) * length)[:, None]  # [BD, 1]

    fused = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
    for tap in range(25):
        column, row_offset, col_offset = _tap(tap)
        w = tl.load(w_ptr + channel * 27 + column, mask=channel_mask, other=0.0)
        src = _clamped_source(row, col, row_offset, col_offset, height, width)
        states = tl.load(h_ptr + planes + src[None, :], mask=mask, other=0.0)
        fused += w[:, None] * states.to(tl.float32)
    c = tl.load(c_ptr + batch.to(tl.int64) * length + tokens, mask=token_mask, other=0.0)
    d = tl.load(d_ptr + channel, mask=channel_mask, other=0.0)
    u = tl.load(u_ptr + planes + tokens[None, :], mask=mask, other=0.0)
    y = fused * c.to(tl.float32)[None, :] + d[:, None] * u.to(tl.float32)
    tl.store(y_ptr + planes + tokens[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=SIZES + ('n_splits',))
def _state_fusion_bwd_kernel(h_ptr, w_ptr, c_ptr, d_ptr, u_ptr, dy_ptr,
                             dh_ptr, dw_ptr, dc_ptr, dd_ptr, du_ptr,
                             channels, height, width, length, n_splits,
                             BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    split = tl.program_id(0)
    n_channel_blocks = tl.cdiv(channels, BLOCK_D)
    batch = tl.program_id(1) // n_channel_blocks
    channel = (tl.program_id(1) % n_channel_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    channel_mask = channel < channels
    planes = ((batch * channels + channel).to(tl.int64) * length)[:, None]
    c_row = batch.to(tl.int64) * length
    d = tl.load(d_ptr + channel, mask=channel_mask, other=0.0)
    tap_ids = tl.arange(0, 32)[None, :]

    dw_acc = tl.zeros([BLOCK_D, 32], dtype=tl.float32)  # column k * 9 + i * 3 + j: tap (k, i, j)
    dd_acc = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
    for block in range(split, tl.cdiv(length, BLOCK_L), n_splits):
        tokens = block * BLOCK_L + tl.arange(0, BLOCK_L)
        token_mask = tokens < length
        mask = channel_mask[:, None] & token_mask[None, :]
        row = tokens // width
        col = tokens % width
        dy = tl.load(dy_ptr + planes + tokens[None, :], mask=mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + planes + tokens[None, :], mask=mask, other=0.0).to(tl.float32)
        c = tl.load(c_ptr + c_row + tokens, mask=token_mask, other=0.0).to(tl.float32)
        g = dy * c[None, :]
        tl.store(du_ptr + planes + tokens[None, :], (d[:, None] * dy).to(du_ptr.dtype.element_ty), mask=mask)
        dd_acc += dy * u

        fused = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
        dh = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
        for tap in range(25):
            column, row_offset, col_offset = _tap(tap)
            w = tl.load(w_ptr + channel * 27 + column, mask=channel_mask, other=0.0)
            src = _clamped_source(row, col, row_offset, col_offset, height, width)
            states = tl.load(h_ptr + planes + src[None, :], mask=mask, other=0.0).to(tl.float32)
            fused += w[:, None] * states
            dw_acc += tl.where(tap_ids == column, tl.sum(g * states, axis=1)[:, None], 0.0)
            # Off the border, target q receives from q - o exactly (that source is not clamped).
            src_row = row - row_offset
            src_col = col - col_offset
            inside = (src_row >= 0) & (src_row < height) & (src_col >= 0) & (src_col < width)
            src = src_row * width + src_col
            dy_src = tl.load(dy_ptr + planes + src[None, :], mask=mask & inside[None, :], other=0.0)
            c_src = tl.load(c_ptr + c_row + src, mask=token_mask & inside, other=0.0)
            dh += w[:, None] * (dy_src.to(tl.float32) * c_src.to(tl.float32)[None, :])
        # dC is shared by all channels: this block's channels summed here, the blocks on the host.
        tl.store(dc_ptr + tl.program_id(1).to(tl.int64) * length + tokens, tl.sum(dy * fused, axis=0),
                 mask=token_mask)
        interior = (row > 0) & (row < height - 1) & (col > 0) & (col < width - 1)
        tl.store(dh_ptr + planes + tokens[None, :], dh.to(dh_ptr.dtype.element_ty), mask=mask & interior[None, :])

    partial = (batch * n_splits + split).to(tl.int64) * channels + channel  # row of [B * n_splits * Di]
    tl.store(dw_ptr + partial[:, None] * 27 + tap_ids, dw_acc, mask=channel_mask[:, None] & (tap_ids < 27))
    tl.store(dd_ptr + partial, tl.sum(dd_acc, axis=1), mask=channel_mask)


@triton.jit
def _source_interval(target, offset, size):
    # Sources s in [0, size) with clamp(s + offset, 0, size - 1) == target: an interval [low, high] (maybe empty).
    low = tl.where(target == 0, 0, target - offset)
    high = tl.where(target == size - 1, size - 1, target - offset)
    return tl.maximum(low, 0), tl.minimum(high, size - 1)


@triton.jit(do_not_specialize=SIZES + ('n_border',))
def _state_fusion_border_bwd_kernel(w_ptr, c_ptr, dy_ptr, dh_ptr, channels, height, width, length, n_border,
                                    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    n_channel_blocks = tl.cdiv(channels, BLOCK_D)
    batch = tl.program_id(1) // n_channel_blocks
    channel = (tl.program_id(1) % n_channel_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    channel_mask = channel < channels
    planes = ((batch * channels + channel).to(tl.int64) * length)[:, None]
    c_row = batch.to(tl.int64) * length

    # Border pixel e: the first and last rows (W each; one row when H = 1), then the first and last columns of the
    # rows between them (two per row; one when W = 1).
    index = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    valid = index < n_border
    full_rows = tl.minimum(height, 2)
    per_row = tl.minimum(width, 2)
    in_full_rows = index < width * full_rows
    side = tl.maximum(index - width * full_rows, 0)
    row = tl.where(in_full_rows, (index // width) * (height - 1), 1 + side // per_row)
    col = tl.where(in_full_rows, index % width, (side % per_row) * (width - 1))
    row = tl.where(valid, row, 0)
    col = tl.where(valid, col, 0)

    # Runtime loops (few pixels, and a fully unrolled 25-tap x 6 x 6 body compiles for minutes). The skipped
    # centre taps of kernels 1 and 2 have weight 0 in the table.
    dh = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
    for tap in range(27):
        dilation = 2 * (tap // 9) + 1
        row_offset = ((tap % 9) // 3 - 1) * dilation
        col_offset = (tap % 3 - 1) * dilation
        w = tl.load(w_ptr + channel * 27 + tap, mask=channel_mask, other=0.0)
        row_low, row_high = _source_interval(row, row_offset, height)
        col_low, col_high = _source_interval(col, col_offset, width)
        # An interval spans |offset| + 1 sources at most.
        for di in range(0, tl.abs(row_offset) + 1):
            for dj in range(0, tl.abs(col_offset) + 1):
                src_row = row_low + di
                src_col = col_low + dj
                take = valid & (src_row <= row_high) & (src_col <= col_high)
                src = src_row * width + src_col
                dy = tl.load(dy_ptr + planes + src[None, :], mask=channel_mask[:, None] & take[None, :], other=0.0)
                c = tl.load(c_ptr + c_row + src, mask=take, other=0.0)
                dh += w[:, None] * (dy.to(tl.float32) * c.to(tl.float32)[None, :])
    target = row * width + col
    tl.store(dh_ptr + planes + target[None, :], dh.to(dh_ptr.dtype.element_ty),
             mask=channel_mask[:, None] & valid[None, :])


def _blocks():
    # 8 channels x 128 tokens per tile on a GPU, 8 warps: each thread holds 4 channels of one token (with 4 warps it
    # holds 8, and ptxas for sm_90 needs 128 / 185 registers in the forward / backward instead of 64 / 128). The
    # interpreter runs the programs one after another and pays per operation, not per element: 64-token blocks still
    # give the small test maps several blocks (and splits).
    interpreted = os.environ.get('TRITON_INTERPRET', '0') == '1'
    return dict(BLOCK_D=8, BLOCK_L=64 if interpreted else 128, num_warps=8)


def tap_weights(kernel_3, kernel_3_1, kernel_3_2, alpha):
    """[Di, 27] float32: alpha_k * K_k flattened per kernel; the centre taps of kernels 1 and 2 added to kernel 0's
    and zeroed (the kernels skip them)."""
    channels = kernel_3.shape[0]
    weights = torch.stack([kernel_3, kernel_3_1, kernel_3_2], dim=1).reshape(channels, 3, 9) * alpha[None, :, None]
    centre = weights[:, :, 4].sum(1)
    weights = weights.clone()
    weights[:, :, 4] = 0.0
    weights[:, 0, 4] = centre
    return weights.reshape(channels, TAPS).contiguous()


def _border_count(height, width):
    return width * min(height, 2) + max(height - 2, 0) * min(width, 2)


@torch.library.custom_op('mlla_mm::state_fusion_fwd', mutates_args=())
def state_fusion_fwd(h: torch.Tensor, kernel_3: torch.Tensor, kernel_3_1: torch.Tensor, kernel_3_2: torch.Tensor,
                     alpha: torch.Tensor, C: torch.Tensor, D: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = h.shape
    length = height * width
    h, C, u = h.contiguous(), C.contiguous(), u.contiguous()
    weights = tap_weights(kernel_3, kernel_3_1, kernel_3_2, alpha)
    y = torch.empty_like(h, memory_format=torch.contiguous_format)
    blocks = _blocks()
    grid = (triton.cdiv(length, blocks['BLOCK_L']), batch * triton.cdiv(channels, blocks['BLOCK_D']))
    _state_fusion_fwd_kernel[grid](h, weights, C, D.contiguous(), u, y, channels, height, width, length, **blocks)
    return y


@state_fusion_fwd.register_fake
def _(h, kernel_3, kernel_3_1, kernel_3_2, alpha, C, D, u):
    return torch.empty_like(h, memory_format=torch.contiguous_format)


@torch.library.custom_op('mlla_mm::state_fusion_bwd', mutates_args=())
def state_fusion_bwd(dy: torch.Tensor, h: torch.Tensor, kernel_3: torch.Tensor, kernel_3_1: torch.Tensor,
                     kernel_3_2: torch.Tensor, alpha: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
                     u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                               torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, channels, height, width = h.shape
    length = height * width
    dy, h, C, u = dy.contiguous(), h.contiguous(), C.contiguous(), u.contiguous()
    weights = tap_weights(kernel_3, kernel_3_1, kernel_3_2, alpha)
    blocks = _blocks()
    n_channel_blocks = triton.cdiv(channels, blocks['BLOCK_D'])
    n_splits = min(triton.cdiv(length, blocks['BLOCK_L']), MAX_SPLITS)
    dh = torch.empty_like(h)  # every pixel is written once, by one of the two kernels
    du = torch.empty_like(u)
    dw = torch.empty(batch, n_splits, channels, TAPS, device=h.device, dtype=torch.float32)
    dd = torch.empty(batch, n_splits, channels, device=h.device, dtype=torch.float32)
    dc = torch.empty(batch, n_channel_blocks, length, device=h.device, dtype=torch.float32)
    _state_fusion_bwd_kernel[(n_splits, batch * n_channel_blocks)](
        h, weights, C, D.contiguous(), u, dy, dh, dw, dc, dd, du, channels, height, width, length, n_splits,
        **blocks)
    n_border = _border_count(height, width)
    _state_fusion_border_bwd_kernel[(triton.cdiv(n_border, blocks['BLOCK_L']), batch * n_channel_blocks)](
        weights, C, dy, dh, channels, height, width, length, n_border, **blocks)

    # Chain rule from the tap table to the kernels and alpha; the shared centre tap feeds all three.
    dw = dw.sum((0, 1)).view(channels, 3, 9).clone()
    dw[:, 1:, 4] = dw[:, :1, 4]
    kernels = torch.stack([kernel_3, kernel_3_1, kernel_3_2], dim=1).reshape(channels, 3, 9)
    dkernels = (dw * alpha[None, :, None]).view(channels, 3, 1, 3, 3)
    dalpha = (dw * kernels).sum((0, 2))
    # Separate copies: a custom op's outputs may not alias each other (slices of one tensor would, for one channel).
    dkernel_3, dkernel_3_1, dkernel_3_2 = (grad.clone() for grad in dkernels.unbind(1))
    return dh, dkernel_3, dkernel_3_1, dkernel_3_2, dalpha, dc.sum(1).view(C.shape).to(C.dtype), dd.sum((0, 1)), du


@state_fusion_bwd.register_fake
def _(dy, h, kernel_3, kernel_3_1, kernel_3_2, alpha, C, D, u):
    return (torch.empty_like(h, memory_format=torch.contiguous_format), torch.empty_like(kernel_3),
            torch.empty_like(kernel_3_1), torch.empty_like(kernel_3_2), torch.empty_like(alpha),
            torch.empty_like(C, memory_format=torch.contiguous_format), torch.empty_like(D),
            torch.empty_like(u, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dy):
    return state_fusion_bwd(dy, *ctx.saved_tensors)


state_fusion_fwd.register_autograd(_backward, setup_context=_setup_context)


def state_fusion_triton(h, kernel_3, kernel_3_1, kernel_3_2, alpha, C, D, u):
    """Triton SASF + observation; same arguments and result as ``state_fusion_reference``. kernel_*, alpha and D
    must be float32 (the public ``state_fusion`` casts them)."""
    return state_fusion_fwd(h, kernel_3, kernel_3_1, kernel_3_2, alpha, C, D, u)
