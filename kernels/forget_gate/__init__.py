"""Forget gate: gated linear attention with a data-dependent, per-key-channel decay (chunked; causal, bidirectional
or 4-direction)."""
import numbers

import torch

from ..backend import select_backend
from .reference import DIRECTIONS, forget_gate_reference, naive_recurrence

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 128  # the Triton kernel's limit (its [16, 16, Dk] decay tile lives in registers)


def check_inputs(q, k, v, g, scale, direction, hw):
    for name, t in (('q', q), ('k', k), ('v', v), ('g', g)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'forget_gate_attention: {name} must be a tensor, got {type(t).__name__}')
        if t.dim() != 4:
            layout = '[B, N, H, Dv]' if name == 'v' else '[B, N, H, Dk]'
            raise ValueError(f'forget_gate_attention: {name} must be {layout}, got shape {tuple(t.shape)}')
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f'forget_gate_attention: {name} has dtype {t.dtype}; supported: {SUPPORTED_DTYPES}')
        if t.device != q.device:
            raise ValueError(f'forget_gate_attention: {name} is on {t.device} but q is on {q.device}')
    if not q.shape == k.shape == g.shape:
        raise ValueError(f'forget_gate_attention: q, k, g must share the shape [B, N, H, Dk], got {tuple(q.shape)}, '
                         f'{tuple(k.shape)}, {tuple(g.shape)}')
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f'forget_gate_attention: v must be [B, N, H, Dv] with [B, N, H] = {tuple(q.shape[:3])} as '
                         f'q, got {tuple(v.shape)}')
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f'forget_gate_attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}')
    if q.shape[1] == 0:
        raise ValueError(f'forget_gate_attention: no tokens (N = 0) in q of shape {tuple(q.shape)}')
    if not isinstance(scale, numbers.Real):
        raise TypeError(f'forget_gate_attention: scale must be a real number, got {type(scale).__name__}')
    if direction not in DIRECTIONS:
        raise ValueError(f'forget_gate_attention: direction={direction!r} is not one of {DIRECTIONS}')
    if direction == '4-direction':
        if hw is None or len(hw) != 2 or any(int(s) != s or s <= 0 for s in hw):
            raise ValueError(f"forget_gate_attention: direction='4-direction' needs hw=(height, width) positive ints, "
                             f'got {hw}')
        if hw[0] * hw[1] != q.shape[1]:
            raise ValueError(f'forget_gate_attention: hw={tuple(hw)} gives {hw[0] * hw[1]} tokens but N={q.shape[1]}')


def forget_gate_attention(q, k, v, g, scale=1.0, direction='causal', hw=None, backend=None):
    """Gated linear attention with a data-dependent decay per head and key channel (the MLLA paper's forget gate).

    Per batch and head, along the token order t = 1..N (row-major over the image for H x W grids):
        S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,     S_0 = 0,     S_t: [Dk, Dv], kept in float32
        o_t = scale * q_t S_t
    i.e. o_i = scale * sum_{j <= i} sum_n q_in k_jn exp(b_in - b_jn) v_j with b the cumsum of g along the order.
    The op applies no feature map, no normaliser, no input gate and no shortcut: the caller applies phi to q and k,
    multiplies v by an input gate, and adds D * x. A decayed denominator q_t z_t (z_t = diag(exp(g_t)) z_{t-1} + k_t)
    comes from the same call with a column of ones appended to v (Dv + 1 value channels): o[..., -1] is then
    scale * q_t z_t, under the same decay mask as the values in every direction, so o[..., :-1] / o[..., -1] is the
    normalised output.

    Directions (the decay mask M_ij multiplying scale * (q_i . k_j) v_j, per key channel):
        'causal'         the paper's: one scan in token order; M_ij = exp(b_i - b_j) for j <= i, 0 for j > i.
        'bidirectional'  a forward scan plus a backward scan over the reversed order whose gates are shifted by one
                         token (step i of the reversed scan, coming from token i + 1, applies g_{i+1}), so that
                         M_ij = exp(-|b_i - b_j|) is symmetric: the decay between two tokens is the product of the
                         gates of the tokens after the earlier one up to and including the later one, either way.
                         o = forward + backward - scale * (q_i . k_i) v_i: the current token counts ONCE.
        '4-direction'    VMamba's four routes over the hw = (height, width) grid: row-major, column-major and the
                         reverse of each (reverses with shifted gates as above). The tokens must be in row-major
                         order; g is per token, shared by all routes. o = sum of the four routes, mapped back to
                         row-major, minus 3 * scale * (q_i . k_i) v_i: M = M_row + M_col - I, the current token
                         counts ONCE, and a token pair in the same row (column) also couples through the
                         column-major (row-major) route, with the decay of the tokens between them along that route.
    Each non-causal direction costs one causal pass per route (routes are stacked along the batch, one kernel call).

    Args:
        q, k: [B, N, H, Dk] queries and keys (float32, float16 or bfloat16; any strides).
        v: [B, N, H, Dv] values, q's dtype (Dv may differ from Dk).
        g: [B, N, H, Dk] log-decay, g <= 0 (forget = exp(g) in (0, 1]; e.g. g = A * softplus(dt), A < 0). Any
            supported dtype; used in float32, so pass float32 (a 16-bit g rounds every gate, and the error compounds
            along the cumulative decay). g > 0 is not checked (it would cost a device sync) and may overflow.
        scale: multiplies the output (1.0: the recurrence as written).
        direction: 'causal' | 'bidirectional' | '4-direction'.
        hw: (height, width) with height * width == N; needed for '4-direction' only.
        backend: 'auto' | 'triton' | 'torch', or None for ``MLLA_MM_BACKEND`` (default 'auto'). The Triton kernel
            takes Dk, Dv <= 128.
    Returns:
        [B, N, H, Dv] in v's dtype, contiguous. Every input gets a gradient (dg in g's dtype).
    Numerics: cumulative decays in float32, chunk-local (16 tokens), exponents always <= 0 (see reference.py).
    """
    check_inputs(q, k, v, g, scale, direction, hw)
    hw = None if hw is None else (int(hw[0]), int(hw[1]))
    if select_backend('forget_gate_attention', backend, q.device) == 'triton':
        if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
            raise ValueError(f'forget_gate_attention: the Triton kernel supports Dk, Dv <= {MAX_HEAD_DIM}, got '
                             f'Dk={q.shape[-1]}, Dv={v.shape[-1]}; use backend="torch"')
        from .triton import forget_gate_triton
        return forget_gate_triton(q, k, v, g, float(scale), direction, hw).contiguous()
    return forget_gate_reference(q, k, v, g, float(scale), direction, hw).contiguous()


__all__ = ['DIRECTIONS', 'SUPPORTED_DTYPES', 'forget_gate_attention', 'forget_gate_reference', 'naive_recurrence']
