"""VMamba's 4-route cross-scan and cross-merge in plain PyTorch (the ground truth for the Triton kernels).

Routes of an H x W map, L = H * W, in the order of the upstream per-direction weights:
    0: row-major (h * W + w)          1: column-major (w * H + h)
    2: route 0 reversed               3: route 1 reversed
cross_merge is the adjoint of cross_scan: it sums the four routes back onto the map.
"""
import torch


def cross_scan_reference(x: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] -> [B, 4, C, H * W]."""
    routes = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1)
    return torch.cat([routes, routes.flip(-1)], dim=1)


def cross_merge_reference(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """y [B, 4, C, H * W] -> [B, C, H, W], summed in float32 and returned in y's dtype."""
    batch, _, channels, _ = y.shape
    forward = y[:, :2].float() + y[:, 2:].float().flip(-1)
    rows = forward[:, 0].view(batch, channels, height, width)
    cols = forward[:, 1].view(batch, channels, width, height).transpose(2, 3)
    return (rows + cols).to(y.dtype)
