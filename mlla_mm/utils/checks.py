"""Input checks shared by the models, with messages that name what was expected and what came."""
import torch


def check_images(x, in_chans: int, owner: str):
    """``x`` must be a floating-point image batch [B, in_chans, H, W]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{owner} expects a tensor, got {type(x).__name__}')
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f'{owner} expects images [B, {in_chans}, H, W], got shape {tuple(x.shape)}')
    if not x.is_floating_point():
        raise TypeError(f'{owner} expects floating-point images, got {x.dtype}')
