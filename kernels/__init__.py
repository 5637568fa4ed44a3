"""Token-mixer ops (installed as ``mlla_mm.kernels``).

Each op has a folder: ``reference.py`` is the PyTorch ground truth, ``triton.py`` the kernels (where they exist) and
``__init__.py`` the public function, which checks its inputs and dispatches to a backend (see ``backend.py``).
Importing this package does not import triton.
"""
from .backend import BACKENDS, backends_used, select_backend
from .cross_scan import cross_merge, cross_scan
from .forget_gate import forget_gate_attention
from .linear_attention import linear_attention
from .selective_scan import selective_scan
from .state_fusion import state_fusion

__all__ = ['BACKENDS', 'backends_used', 'cross_merge', 'cross_scan', 'forget_gate_attention', 'linear_attention',
           'select_backend', 'selective_scan', 'state_fusion']
