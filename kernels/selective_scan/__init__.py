"""S6 selective scan (Mamba-1, grouped B/C as in VMamba): delta bias + softplus, D skip, float32 state."""
import torch

from ..backend import select_backend
from .reference import selective_scan_reference

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_inputs(u, delta, A, B, C, D, delta_bias):
    named = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias)
    for name, t in named.items():
        if t is None and name in ('D', 'delta_bias'):
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'selective_scan: {name} must be a tensor, got {type(t).__name__}')
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f'selective_scan: {name} has dtype {t.dtype}; supported: {SUPPORTED_DTYPES}')
        if t.device != u.device:
            raise ValueError(f'selective_scan: {name} is on {t.device} but u is on {u.device}')
    if u.dim() != 3:
        raise ValueError(f'selective_scan: u must be [batch, dim, L], got shape {tuple(u.shape)}')
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f'selective_scan: delta must have the shape of u {tuple(u.shape)}, got {tuple(delta.shape)}')
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f'selective_scan: A must be [dim={dim}, N], got shape {tuple(A.shape)}')
    n_state = A.shape[1]
    for name, t in (('B', B), ('C', C)):
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != n_state or t.shape[3] != length:
            raise ValueError(f'selective_scan: {name} must be [batch={batch}, G, N={n_state}, L={length}], '
                             f'got shape {tuple(t.shape)}')
    if B.shape != C.shape:
        raise ValueError(f'selective_scan: B and C shapes differ: {tuple(B.shape)}, {tuple(C.shape)}')
    if dim % B.shape[1]:
        raise ValueError(f'selective_scan: dim={dim} is not divisible by the B/C groups G={B.shape[1]}')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f'selective_scan: {name} must be [dim={dim}], got shape {tuple(t.shape)}')
    if not u.dtype == delta.dtype == B.dtype == C.dtype:
        raise TypeError(f'selective_scan: u, delta, B, C must share a dtype, got {u.dtype}, {delta.dtype}, '
                        f'{B.dtype}, {C.dtype}')


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, output_fp32=False,
                   backend=None):
    """Selective scan over L tokens for ``dim`` channels that share B and C within G groups.

    Args:
        u: [batch, dim, L] inputs (float32, float16 or bfloat16; any strides).
        delta: [batch, dim, L] time steps before the optional bias and softplus; u's dtype.
        A: [dim, N] state matrix (negative for a decaying state); used in float32.
        B, C: [batch, G, N, L] input and output projections, G dividing dim; u's dtype.
        D: [dim] skip weight or None; used in float32.
        delta_bias: [dim] added to delta before the softplus, or None; used in float32.
        delta_softplus: apply softplus to delta (+ bias).
        output_fp32: return float32 whatever the input dtype (VMamba's guard against float16 overflow);
            otherwise u's dtype. The state is float32 either way.
        backend: 'auto' | 'triton' | 'torch', or None for ``MLLA_MM_BACKEND`` (default 'auto').
    Returns:
        y [batch, dim, L], contiguous.
    """
    check_inputs(u, delta, A, B, C, D, delta_bias)
    # Float32 parameters on both backends; autograd casts their gradients back to the caller's dtype.
    A = A.float()
    D = D.float() if D is not None else None
    delta_bias = delta_bias.float() if delta_bias is not None else None
    if select_backend('selective_scan', backend, u.device) == 'triton':
        from .triton import selective_scan_triton
        return selective_scan_triton(u, delta, A, B, C, D, delta_bias, delta_softplus, output_fp32)
    return selective_scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus, output_fp32).contiguous()


__all__ = ['selective_scan', 'selective_scan_reference', 'SUPPORTED_DTYPES']
