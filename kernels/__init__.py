"""Token-mixer ops (installed as ``mlla_mm.kernels``).

Each op has a folder: ``reference.py`` is the PyTorch ground truth, ``triton.py`` the kernels (where they exist) and
``__init__.py`` the public function, which checks its inputs and dispatches to a backend (see ``backend.py``).
Importing this package does not import triton.
"""
from .backend import BACKENDS, backends_used, select_backend
from .linear_attention import linear_attention

__all__ = ['BACKENDS', 'backends_used', 'linear_attention', 'select_backend']
