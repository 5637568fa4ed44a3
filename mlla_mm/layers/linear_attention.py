"""The MLLA token mixer: qk projection, linear attention (``mlla_mm.kernels.linear_attention``) and LePE."""
import torch
import torch.nn as nn

from mlla_mm.kernels import linear_attention

from .conv import DepthwiseConv2d


class LinearAttention(nn.Module):
    """MLLA linear attention on a channels-last [B, H, W, C] map; v is the input itself (no V projection).

    Keys: ``qk.{weight,bias}`` (Linear C -> 2C, q first) and ``lepe.{weight,bias}`` (3x3 depthwise conv).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'LinearAttention: dim={dim} is not divisible by num_heads={num_heads}')
        self.dim = dim
        self.num_heads = num_heads
        self.backend = backend
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.lepe = DepthwiseConv2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        # The packed projection goes in whole: its gradient comes back as one tensor, with no zero-filled gradient
        # per q / k slice.
        qk = self.qk(x).flatten(1, 2)
        v = x.view(batch, height * width, self.num_heads, channels // self.num_heads)
        out = linear_attention(qk, v, (height, width), backend=self.backend)
        return out.view(batch, height, width, channels) + self.lepe(x)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}, backend={self.backend}'
