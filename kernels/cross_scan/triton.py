"""Cross-scan and cross-merge in Triton: one kernel, two directions, sizes as runtime arguments.

Each program takes a BLOCK_H x BLOCK_W tile of one (batch, channel) plane. The scan loads the tile once and stores
it to the four routes (row-major, column-major and their reverses); the merge loads the four routes and stores
their float32 sum. The scan's backward is the merge and vice versa. H, W and C are runtime arguments, so a new
input size reuses the compiled kernel (upstream's constexpr sizes recompile for every shape); they are listed in
``do_not_specialize``, so not even the ==1 / %16 specialisations add variants: one per (dtype, direction).
The Triton path is a pair of torch custom ops (``mlla_mm::cross_scan``, ``mlla_mm::cross_merge``).
"""
import torch
import triton
import triton.language as tl

BLOCK_H = 32
BLOCK_W = 32


@triton.jit(do_not_specialize=('channels', 'height', 'width'))
def _cross_scan_kernel(map_ptr, routes_ptr, channels, height, width, MERGE: tl.constexpr,
                       BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    plane = tl.program_id(0)  # batch * channels + channel
    tile = tl.program_id(1)
    tiles_w = tl.cdiv(width, BLOCK_W)
    rows = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    cols = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    mask = (rows < height) & (cols < width)
    length = height * width
    row_major = rows * width + cols
    col_major = cols * height + rows
    batch = plane // channels
    channel = plane % channels
    map_base = plane.to(tl.int64) * length
    # routes: [batch, 4, channels, L]; route k of this plane starts at ((batch * 4 + k) * channels + channel) * L
    route_stride = channels.to(tl.int64) * length
    route_base = (batch * 4 * channels + channel).to(tl.int64) * length
    if MERGE:
        # Summed in the reference's order (route 0 + reversed 2, route 1 + reversed 3), so results are identical.
        rows_sum = tl.load(routes_ptr + route_base + row_major, mask=mask).to(tl.float32)
        rows_sum += tl.load(routes_ptr + route_base + 2 * route_stride + (length - 1 - row_major),
                            mask=mask).to(tl.float32)
        cols_sum = tl.load(routes_ptr + route_base + route_stride + col_major, mask=mask).to(tl.float32)
        cols_sum += tl.load(routes_ptr + route_base + 3 * route_stride + (length - 1 - col_major),
                            mask=mask).to(tl.float32)
        total = rows_sum + cols_sum
        tl.store(map_ptr + map_base + row_major, total.to(map_ptr.dtype.element_ty), mask=mask)
    else:
        value = tl.load(map_ptr + map_base + row_major, mask=mask)
        tl.store(routes_ptr + route_base + row_major, value, mask=mask)
        tl.store(routes_ptr + route_base + route_stride + col_major, value, mask=mask)
        tl.store(routes_ptr + route_base + 2 * route_stride + (length - 1 - row_major), value, mask=mask)
        tl.store(routes_ptr + route_base + 3 * route_stride + (length - 1 - col_major), value, mask=mask)


def _run(feature_map, routes, merge):
    batch, channels, height, width = feature_map.shape
    grid = (batch * channels, triton.cdiv(height, BLOCK_H) * triton.cdiv(width, BLOCK_W))
    _cross_scan_kernel[grid](feature_map, routes, channels, height, width, MERGE=merge,
                             BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W)


# Custom ops (kernels/backend.py explains the pattern): torch.compile sees each launch as one node, and the
# scan's backward is the merge and vice versa.
@torch.library.custom_op('mlla_mm::cross_scan', mutates_args=())
def _cross_scan_op(x: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = x.shape
    routes = x.new_empty(batch, 4, channels, height * width)
    _run(x.contiguous(), routes, merge=False)
    return routes


@_cross_scan_op.register_fake
def _(x):
    batch, channels, height, width = x.shape
    return x.new_empty(batch, 4, channels, height * width)


@torch.library.custom_op('mlla_mm::cross_merge', mutates_args=())
def _cross_merge_op(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    batch, _, channels, _ = y.shape
    merged = y.new_empty(batch, channels, height, width)
    _run(merged, y.contiguous(), merge=True)
    return merged


@_cross_merge_op.register_fake
def _(y, height, width):
    return y.new_empty(y.shape[0], y.shape[2], height, width)


def _scan_setup(ctx, inputs, output):
    ctx.hw = inputs[0].shape[2:]


def _scan_backward(ctx, grad_routes):
    return _cross_merge_op(grad_routes, *ctx.hw)


def _merge_setup(ctx, inputs, output):
    pass


def _merge_backward(ctx, grad_map):
    return _cross_scan_op(grad_map), None, None


_cross_scan_op.register_autograd(_scan_backward, setup_context=_scan_setup)
_cross_merge_op.register_autograd(_merge_backward, setup_context=_merge_setup)


def cross_scan_triton(x):
    """x [B, C, H, W] -> [B, 4, C, H * W]; see ``cross_scan_reference``."""
    return _cross_scan_op(x)


def cross_merge_triton(y, height, width):
    """y [B, 4, C, H * W] -> [B, C, H, W] in y's dtype; see ``cross_merge_reference``."""
    return _cross_merge_op(y, height, width)
