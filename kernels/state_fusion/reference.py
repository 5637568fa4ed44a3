"""Structure-aware state fusion (SASF) and the SSM observation in plain PyTorch: the ground truth that the Triton
kernel is tested against.

Math (Spatial-Mamba, reference/spatial_mamba.md §1.3-1.4; per channel d, position p = (row, col)):
    h'[p] = sum_k alpha[k] * sum_{i,j in 0..2} K_k[d, i, j] * h[clamp(p + dil_k * (i - 1, j - 1))]
    y[p]  = h'[p] * C[p] + D[d] * u[p]
with dilations dil = (1, 3, 5) for K = (kernel_3, kernel_3_1, kernel_3_2). ``clamp`` keeps each coordinate inside the
map: a tap that falls outside reads the nearest border pixel (replicate padding by the dilation, as upstream's
training path; its merged 11 x 11 eval kernel clamps the same way). C is shared by all channels. Computed in float32.
"""
import torch
import torch.nn.functional as F

DILATIONS = (1, 3, 5)


def state_fusion_reference(h, kernel_3, kernel_3_1, kernel_3_2, alpha, C, D, u) -> torch.Tensor:
    """h, u: [B, Di, H, W]; kernel_*: [Di, 1, 3, 3]; alpha: [3]; C: [B, 1, H, W]; D: [Di].

    Returns y [B, Di, H, W] in h's dtype."""
    channels = h.shape[1]
    # Float32 under autocast too (which would run the convolutions in half precision), as the Triton kernel.
    with torch.autocast(h.device.type, enabled=False):
        states = h.float()
        alpha = alpha.float()
        fused = 0
        for k, (dilation, kernel) in enumerate(zip(DILATIONS, (kernel_3, kernel_3_1, kernel_3_2))):
            # Replicate padding works for maps smaller than the padding too (F.pad clamps the indices).
            padded = F.pad(states, (dilation,) * 4, mode='replicate')
            fused = fused + alpha[k] * F.conv2d(padded, kernel.float(), dilation=dilation, groups=channels)
        y = fused * C.float() + D.float()[:, None, None] * u.float()
    return y.to(h.dtype)
