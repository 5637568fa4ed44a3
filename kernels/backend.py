"""Backend choice for every op: ``auto`` | ``triton`` | ``torch``, reported once per op and backend.

- ``backend=None`` takes the default from ``MLLA_MM_BACKEND`` (``auto`` when unset).
- ``auto`` runs Triton on CUDA tensors and the PyTorch reference elsewhere, and says so once;
  ``MLLA_MM_STRICT=1`` makes ``auto`` raise instead of falling back.
- ``triton`` raises where Triton cannot run. On a CPU it runs only under ``TRITON_INTERPRET=1`` (used by the tests).
"""
import logging
import os

import torch

BACKENDS = ('auto', 'triton', 'torch')
logger = logging.getLogger('mlla_mm')
_used = {}  # op name -> set of backends that ran


def default_backend():
    backend = os.environ.get('MLLA_MM_BACKEND', 'auto')
    if backend not in BACKENDS:
        raise ValueError(f'MLLA_MM_BACKEND={backend!r} is not a backend; choose one of {BACKENDS}')
    return backend


def strict_mode():
    return os.environ.get('MLLA_MM_STRICT', '0') not in ('', '0')


def triton_unavailable_reason(device: torch.device):
    """Why Triton cannot run on ``device`` here, or None when it can."""
    interpreted = os.environ.get('TRITON_INTERPRET', '0') == '1'
    if device.type != 'cuda' and not interpreted:
        return f'the tensors are on {device.type} and Triton needs CUDA tensors (or TRITON_INTERPRET=1)'
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return f'triton cannot be imported ({error})'
    return None


def select_backend(op: str, backend, device: torch.device) -> str:
    """Return 'triton' or 'torch' for ``op`` on ``device``; raise where the request cannot be honoured."""
    backend = default_backend() if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f'{op}: backend={backend!r} is not a backend; choose one of {BACKENDS}')
    if backend == 'torch':
        return _report(op, 'torch', 'requested')
    reason = triton_unavailable_reason(device)
    if reason is None and backend == 'auto' and device.type != 'cuda':
        # The interpreter serves explicit backend='triton' (tests); it is far too slow to be picked automatically.
        reason = f'auto runs Triton on CUDA tensors only, and these are on {device.type}'
    if reason is None:
        return _report(op, 'triton', 'requested' if backend == 'triton' else f'auto, {device.type} tensors')
    if backend == 'triton':
        raise RuntimeError(f"{op}: backend='triton' cannot run: {reason}")
    if strict_mode():
        raise RuntimeError(f'{op}: MLLA_MM_STRICT=1 forbids the fallback to the PyTorch reference: {reason}')
    return _report(op, 'torch', f'auto fell back to the PyTorch reference: {reason}')


def _report(op, backend, why):
    if backend not in _used.setdefault(op, set()):
        _used[op].add(backend)
        logger.info('%s runs on the %s backend (%s)', op, backend, why)
    return backend


def backends_used():
    """{op: sorted backends} for every op that ran in this process."""
    return {op: sorted(backends) for op, backends in _used.items()}
