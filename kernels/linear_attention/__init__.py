"""MLLA linear attention: ELU+1 feature map, 2-D RoPE, mean-k normaliser, one (D x D) state per head."""
import torch

from ..backend import select_backend
from .reference import linear_attention_reference

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_inputs(q, k, v, hw):
    for name, t in (('q', q), ('k', k), ('v', v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'linear_attention: {name} must be a tensor, got {type(t).__name__}')
        if t.dim() != 4:
            raise ValueError(f'linear_attention: {name} must be [B, N, H, D], got shape {tuple(t.shape)}')
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f'linear_attention: {name} has dtype {t.dtype}; supported: {SUPPORTED_DTYPES}')
    if not q.shape == k.shape == v.shape:
        raise ValueError(f'linear_attention: q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, '
                         f'{tuple(v.shape)}')
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f'linear_attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}')
    if not q.device == k.device == v.device:
        raise ValueError(f'linear_attention: q, k, v are on different devices: {q.device}, {k.device}, {v.device}')
    if len(hw) != 2 or any(int(s) != s or s <= 0 for s in hw):
        raise ValueError(f'linear_attention: hw must be (height, width) positive ints, got {hw}')
    _, tokens, heads, dim = q.shape
    if hw[0] * hw[1] != tokens:
        raise ValueError(f'linear_attention: hw={tuple(hw)} gives {hw[0] * hw[1]} tokens but N={tokens}')
    if (heads * dim) % 4:
        raise ValueError(f'linear_attention: 2-D RoPE needs H*D divisible by 4, got {heads}*{dim}')


def linear_attention(q, k, v, hw, backend=None):
    """MLLA linear attention over an H x W token grid.

    Args:
        q, k: [B, N, H, D] queries and keys *before* the ELU+1 feature map (any strides; views of a qk projection
            are fine). RoPE is applied over all C = H * D channels before the head split, as upstream.
        v: [B, N, H, D] values.
        hw: (height, width) of the grid, height * width == N.
        backend: 'auto' | 'triton' | 'torch', or None for ``MLLA_MM_BACKEND`` (default 'auto').
    Returns:
        [B, N, H, D], contiguous, in the input dtype.
    """
    check_inputs(q, k, v, hw)
    hw = (int(hw[0]), int(hw[1]))
    if select_backend('linear_attention', backend, q.device) == 'triton':
        from .triton import linear_attention_triton
        return linear_attention_triton(q, k, v, hw)
    return linear_attention_reference(q, k, v, hw)


__all__ = ['linear_attention', 'linear_attention_reference', 'SUPPORTED_DTYPES']
