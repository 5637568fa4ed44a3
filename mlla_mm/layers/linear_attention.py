"""The MLLA token mixer: qk projection, then linear attention with LePE (``mlla_mm.kernels.linear_attention``)."""
import torch
import torch.nn as nn

from mlla_mm.kernels import linear_attention

from .conv import DepthwiseConv2d


class LinearAttention(nn.Module):
    """MLLA linear attention on a channels-last [B, H, W, C] map; v is the input itself (no V projection).

    Keys: ``qk.{weight,bias}`` (Linear C -> 2C, q first) and ``lepe.{weight,bias}`` (3x3 depthwise conv). The op
    applies LePE itself (in its output kernel on the Triton backend), with the ``lepe`` module's parameters.
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
        out = linear_attention(qk, v, (height, width), lepe_weight=self.lepe.weight, lepe_bias=self.lepe.bias,
                               backend=self.backend)
        return out.view(batch, height, width, channels)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}, backend={self.backend}'
