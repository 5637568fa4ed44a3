"""Model families: one file each (block -> stage -> model -> checkpoint filter -> named constructors)."""
from . import mlla  # noqa: F401  (registers the constructors)
from .mlla import MLLA, MLLA_ARCHS
from .registry import create_model, list_models, register_model

__all__ = ['MLLA', 'MLLA_ARCHS', 'create_model', 'list_models', 'register_model']
