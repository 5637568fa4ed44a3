"""Cross-scan / cross-merge: the Triton kernels (CPU interpreter) against the PyTorch reference."""
import pytest
import torch

from mlla_mm.kernels.cross_scan import cross_merge, cross_scan
from mlla_mm.kernels.cross_scan.reference import cross_merge_reference, cross_scan_reference
from tests.tolerances import assert_close


def test_reference_routes():
    x = torch.arange(6.0).view(1, 1, 2, 3)  # [[0, 1, 2], [3, 4, 5]]
    routes = cross_scan_reference(x)[0, :, 0]
    assert routes.tolist() == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    # merge is the adjoint of scan: <scan(x), y> == <x, merge(y)>
    y = torch.randn(1, 4, 1, 6)
    assert torch.allclose((routes * y[0, :, 0]).sum(), (x * cross_merge_reference(y, 2, 3)).sum())


# Odd, rectangular, and larger than one 32 x 32 tile in each direction.
@pytest.mark.parametrize('size', [(1, 1), (7, 5), (33, 70)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_kernels_match_reference(size, dtype):
    """Outputs and gradients against the float32 reference on the same (rounded) inputs."""
    height, width = size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, height, width, generator=gen).to(dtype).requires_grad_()
    y = torch.randn(2, 4, 3, height * width, generator=gen).to(dtype).requires_grad_()
    x32, y32 = (t.detach().float().requires_grad_() for t in (x, y))

    routes = cross_scan(x, backend='triton')
    expected_routes = cross_scan_reference(x32)
    assert routes.dtype == dtype and torch.equal(routes.float(), expected_routes)  # pure copies
    merged = cross_merge(y, height, width, backend='triton')
    expected_merged = cross_merge_reference(y32, height, width)
    assert merged.dtype == dtype and merged.shape == (2, 3, height, width)
    assert_close(merged, expected_merged, dtype, 'cross_merge')

    grad_routes = torch.randn(routes.shape, generator=gen).to(dtype)
    grad_x, = torch.autograd.grad(routes, x, grad_routes)
    expected_grad_x, = torch.autograd.grad(expected_routes, x32, grad_routes.float())
    assert_close(grad_x, expected_grad_x, dtype, 'cross_scan dx')
    grad_merged = torch.randn(merged.shape, generator=gen).to(dtype)
    grad_y, = torch.autograd.grad(merged, y, grad_merged)
    expected_grad_y, = torch.autograd.grad(expected_merged, y32, grad_merged.float())
    assert_close(grad_y, expected_grad_y, dtype, 'cross_merge dy')


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r'x must be \[B, C, H, W\]'):
        cross_scan(torch.randn(3, 4, 5))
    with pytest.raises(TypeError, match='int64'):
        cross_scan(torch.zeros(1, 1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r'H \* W = 3 \* 4'):
        cross_merge(torch.randn(1, 4, 2, 11), 3, 4)
