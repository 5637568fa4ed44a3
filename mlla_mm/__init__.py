"""mlla_mm: MLLA and vision-Mamba backbones with Triton kernels for MMDetection and MMSegmentation.

``import mlla_mm`` imports neither mmdet, mmseg nor triton; ``import mlla_mm.mm`` registers the backbones into the
MMDetection and MMSegmentation registries (each where that library is installed).
"""
import logging

__version__ = '0.1.0'

# Backend choices and checkpoint reports are INFO messages that users should see: unless the application
# configured logging itself, give the package logger a handler of its own.
_logger = logging.getLogger('mlla_mm')
if not _logger.handlers and not logging.getLogger().handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter('mlla_mm: %(message)s'))
    _logger.addHandler(_handler)
    _logger.setLevel(logging.INFO)

from .models import create_model, list_models  # noqa: E402
from . import timm_bridge  # noqa: E402

timm_bridge.install()  # our models join timm's registry once timm is imported

__all__ = ['__version__', 'create_model', 'list_models']
