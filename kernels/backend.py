"""Backend choice for every op: ``auto`` | ``triton`` | ``torch``, reported once per op and backend.

- ``backend=None`` takes the default from ``MLLA_MM_BACKEND`` (``auto`` when unset).
- ``auto`` runs Triton on CUDA tensors and the PyTorch reference elsewhere, and says so once;
  ``MLLA_MM_STRICT=1`` makes ``auto`` raise instead of falling back.
- ``triton`` raises where Triton cannot run. On a CPU it runs only under ``TRITON_INTERPRET=1`` (used by the tests).

The pattern every op follows, so that ``torch.compile(model, fullgraph=True, dynamic=True)`` has no graph break:

1. The public function (``kernels/<op>/__init__.py``) checks its inputs and calls ``select_backend`` in plain Python.
   Under dynamo this is traced like any other Python: the environment reads are plain ``os.environ.get`` (dynamo
   supports them and guards on them), and the report (a ``logger.info``, a dynamo graph break) is skipped while
   ``torch.compiler.is_compiling()``: the eager run before or after compilation still reports.
2. The ``torch`` backend is plain differentiable PyTorch; dynamo traces it directly.
3. The ``triton`` backend is a torch custom op (``kernels/<op>/triton.py``)::

       @torch.library.custom_op('mlla_mm::<op>_fwd', mutates_args=())
       def _fwd(x: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:  # launches the kernels
       @_fwd.register_fake
       def _(x, size): ...                        # empty outputs of the right shapes (SymInt-friendly)
       torch.library.register_autograd('mlla_mm::<op>_fwd', backward, setup_context=setup_context)

   where ``backward`` calls a second custom op (``<op>_bwd``, with its own fake) that launches the backward kernels.
   Dynamo then sees one opaque node per launch group; ``import triton`` happens inside the op bodies (and in
   ``triton.py``, which the public function imports lazily), never at ``import mlla_mm``.
4. Kernel size arguments are runtime ints listed in ``do_not_specialize``; constexprs depend on the model (dtype,
   head dim, d_state), never on the input size, so a new image size neither recompiles the kernels nor (with
   ``dynamic=True``) the graph.
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
    if torch.compiler.is_compiling():
        # Inside a dynamo trace: logging would break the graph. The eager call (or the next one) reports instead.
        return backend
    if backend not in _used.setdefault(op, set()):
        _used[op].add(backend)
        logger.info('%s runs on the %s backend (%s)', op, backend, why)
    return backend


def backends_used():
    """{op: sorted backends} for every op that ran in this process."""
    return {op: sorted(backends) for op, backends in _used.items()}
