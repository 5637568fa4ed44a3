"""Model families: one file each (block -> stage -> model -> checkpoint filter -> pretrained cfgs -> named
constructors -> ``register_family``), following the contract in README.md beside this file.

Every module of this package other than ``registry`` is a family file and is imported here, so adding a family is
adding its file.
"""
import importlib
import pkgutil

from .registry import (FeatureMaps, create_model, feature_take_indices, get_family, get_pretrained_cfg, list_families,
                       list_models, register_family, register_model)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != 'registry' and not _module.name.startswith('_'):
        importlib.import_module(f'{__name__}.{_module.name}')

from .mlla import MLLA, MLLA_ARCHS  # noqa: E402
from .vmamba import VMAMBA_ARCHS, VMamba  # noqa: E402

__all__ = ['FeatureMaps', 'MLLA', 'MLLA_ARCHS', 'VMAMBA_ARCHS', 'VMamba', 'create_model', 'feature_take_indices',
           'get_family', 'get_pretrained_cfg', 'list_families', 'list_models', 'register_family', 'register_model']
