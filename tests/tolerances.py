"""The one tolerance table for comparing a kernel (or a model on a kernel backend) with its fp32 reference.

Keyed by the dtype of the inputs; outputs and gradients use the same entry. Never loosen an entry to make a test pass.
"""
import torch

TOLERANCES = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str = 'tensor'):
    """Compare in float32 with the tolerance of ``dtype``; the message names the tensor."""
    torch.testing.assert_close(actual.float(), expected.float(), **TOLERANCES[dtype],
                               msg=lambda m: f'{name} ({dtype}): {m}')
