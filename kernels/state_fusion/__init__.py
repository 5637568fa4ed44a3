"""Structure-aware state fusion (Spatial-Mamba's SASF) followed by the SSM observation y = h' * C + D * u."""
import torch

from ..backend import select_backend
from .reference import DILATIONS, state_fusion_reference

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_inputs(h, kernel_3, kernel_3_1, kernel_3_2, alpha, C, D, u):
    named = dict(h=h, kernel_3=kernel_3, kernel_3_1=kernel_3_1, kernel_3_2=kernel_3_2, alpha=alpha, C=C, D=D, u=u)
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'state_fusion: {name} must be a tensor, got {type(t).__name__}')
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f'state_fusion: {name} has dtype {t.dtype}; supported: {SUPPORTED_DTYPES}')
        if t.device != h.device:
            raise ValueError(f'state_fusion: {name} is on {t.device} but h is on {h.device}')
    if h.dim() != 4:
        raise ValueError(f'state_fusion: h must be [batch, channels, H, W], got shape {tuple(h.shape)}')
    batch, channels, height, width = h.shape
    for name in ('kernel_3', 'kernel_3_1', 'kernel_3_2'):
        if named[name].shape != (channels, 1, 3, 3):
            raise ValueError(f'state_fusion: {name} must be [channels={channels}, 1, 3, 3], '
                             f'got shape {tuple(named[name].shape)}')
    if alpha.shape != (3,):
        raise ValueError(f'state_fusion: alpha must be [3], got shape {tuple(alpha.shape)}')
    if C.shape != (batch, 1, height, width):
        raise ValueError(f'state_fusion: C must be [batch={batch}, 1, H={height}, W={width}], '
                         f'got shape {tuple(C.shape)}')
    if D.shape != (channels,):
        raise ValueError(f'state_fusion: D must be [channels={channels}], got shape {tuple(D.shape)}')
    if u.shape != h.shape:
        raise ValueError(f'state_fusion: u must have the shape of h {tuple(h.shape)}, got {tuple(u.shape)}')


def state_fusion(h, kernel_3, kernel_3_1, kernel_3_2, alpha, C, D, u, backend=None):
    """Fuse the SSM states over the 2-D map, then observe them.

    y = (sum_k alpha[k] * dwconv_{dil_k}(replicate_pad(h, dil_k), K_k)) * C + D * u, dil = (1, 3, 5); see
    ``reference.py`` for the exact equations. Training and evaluation run the same code (no cached merged kernel).

    Args:
        h: [batch, channels, H, W] states (the scan's float32 output in Spatial-Mamba; any supported dtype, strides).
        kernel_3, kernel_3_1, kernel_3_2: [channels, 1, 3, 3] depthwise kernels of dilation 1, 3 and 5; float32 math.
        alpha: [3] weights of the three kernels; float32 math.
        C: [batch, 1, H, W] observation weights, shared by all channels.
        D: [channels] skip weight; float32 math.
        u: [batch, channels, H, W] the scan's input, for the skip.
        backend: 'auto' | 'triton' | 'torch', or None for ``MLLA_MM_BACKEND`` (default 'auto').
    Returns:
        y [batch, channels, H, W] in h's dtype, contiguous. Every input gets its gradient.
    """
    check_inputs(h, kernel_3, kernel_3_1, kernel_3_2, alpha, C, D, u)
    # Float32 parameters on both backends; autograd casts their gradients back to the caller's dtype.
    kernel_3, kernel_3_1, kernel_3_2, alpha, D = (t.float() for t in (kernel_3, kernel_3_1, kernel_3_2, alpha, D))
    if select_backend('state_fusion', backend, h.device) == 'triton':
        from .triton import state_fusion_triton
        return state_fusion_triton(h, kernel_3, kernel_3_1, kernel_3_2, alpha, C, D, u)
    return state_fusion_reference(h, kernel_3, kernel_3_1, kernel_3_2, alpha, C, D, u).contiguous()


__all__ = ['DILATIONS', 'SUPPORTED_DTYPES', 'state_fusion', 'state_fusion_reference']
