"""Model families: one file each (block -> stage -> model -> checkpoint filter -> named constructors)."""
from . import mlla, vmamba  # noqa: F401  (register the constructors)
from .mlla import MLLA, MLLA_ARCHS
from .registry import create_model, list_models, register_model
from .vmamba import VMAMBA_ARCHS, VMamba

__all__ = ['MLLA', 'MLLA_ARCHS', 'VMAMBA_ARCHS', 'VMamba', 'create_model', 'list_models', 'register_model']
