"""VMamba's 4-route cross-scan (map -> routes) and cross-merge (routes -> map)."""
import torch

from ..backend import select_backend
from .reference import cross_merge_reference, cross_scan_reference

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_tensor(op, name, t, rank, layout):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{op}: {name} must be a tensor, got {type(t).__name__}')
    if t.dim() != rank:
        raise ValueError(f'{op}: {name} must be {layout}, got shape {tuple(t.shape)}')
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f'{op}: {name} has dtype {t.dtype}; supported: {SUPPORTED_DTYPES}')


def cross_scan(x, backend=None):
    """The four scan routes of a map: row-major, column-major, and each reversed.

    Args:
        x: [B, C, H, W].
        backend: 'auto' | 'triton' | 'torch', or None for ``MLLA_MM_BACKEND`` (default 'auto').
    Returns:
        [B, 4, C, H * W] in x's dtype.
    """
    _check_tensor('cross_scan', 'x', x, 4, '[B, C, H, W]')
    if select_backend('cross_scan', backend, x.device) == 'triton':
        from .triton import cross_scan_triton
        return cross_scan_triton(x)
    return cross_scan_reference(x)


def cross_merge(y, height, width, backend=None):
    """Sum the four routes back onto the H x W map (the adjoint of ``cross_scan``).

    Args:
        y: [B, 4, C, H * W].
        height, width: the map size.
        backend: 'auto' | 'triton' | 'torch', or None for ``MLLA_MM_BACKEND`` (default 'auto').
    Returns:
        [B, C, H, W] in y's dtype (summed in float32).
    """
    _check_tensor('cross_merge', 'y', y, 4, '[B, 4, C, H * W]')
    if y.shape[1] != 4 or y.shape[3] != height * width:
        raise ValueError(f'cross_merge: y must be [B, 4, C, H * W = {height} * {width}], got shape {tuple(y.shape)}')
    if select_backend('cross_merge', backend, y.device) == 'triton':
        from .triton import cross_merge_triton
        return cross_merge_triton(y, height, width)
    return cross_merge_reference(y, height, width)


__all__ = ['cross_merge', 'cross_merge_reference', 'cross_scan', 'cross_scan_reference', 'SUPPORTED_DTYPES']
