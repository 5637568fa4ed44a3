"""Convolution building blocks that keep activations channels-last."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class DepthwiseConv2d(nn.Conv2d):
    """3x3 depthwise conv applied to a channels-last [B, H, W, C] map.

    The permutes are views: the conv sees a channels_last-strided NCHW tensor, so no layout copy is made.
    The parameters are those of ``nn.Conv2d(C, C, 3, padding=1, groups=C)`` (keys ``weight``, ``bias``).
    """

    def __init__(self, channels: int):
        super().__init__(channels, channels, kernel_size=3, padding=1, groups=channels, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ConvNormAct(nn.Module):
    """Conv2d -> optional BatchNorm2d -> optional ReLU on NCHW maps; submodule names ``conv`` / ``norm`` match
    upstream MLLA's ``ConvLayer`` so checkpoints load by key."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=0, groups=1, bias=True,
                 norm=True, act=True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(out_channels) if norm else None
        self.act = nn.ReLU() if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = F.relu(x)
        return x
