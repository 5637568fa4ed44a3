"""nn building blocks shared by the model families."""
from .conv import ConvNormAct, DepthwiseConv2d
from .linear_attention import LinearAttention
from .mlp import DropPath, Mlp, init_linear_and_layernorm

__all__ = ['ConvNormAct', 'DepthwiseConv2d', 'DropPath', 'LinearAttention', 'Mlp', 'init_linear_and_layernorm']
