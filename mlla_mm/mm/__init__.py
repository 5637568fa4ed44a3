"""OpenMMLab adapters. Importing this module registers the backbones into ``mmdet.registry.MODELS`` and
``mmseg.registry.MODELS``, each only where that library can be imported.

Configs reach it with ``custom_imports=dict(imports=['mlla_mm.mm'], allow_failed_imports=False)``;
``tools/train.py`` and ``tools/test.py`` import it themselves.
"""
import importlib

from .mlla import MLLABackbone
from .vmamba import VMambaBackbone

# Registered type name -> class.
BACKBONES = {'MLLA': MLLABackbone, 'VMamba': VMambaBackbone}

# Short names (as in `tools/train.py --backbone NAME`) -> backbone config.
BACKBONE_NAMES = {
    'mlla_t': dict(type='MLLA', arch='tiny'),
    'mlla_s': dict(type='MLLA', arch='small'),
    'mlla_b': dict(type='MLLA', arch='base'),
    'mlla_test': dict(type='MLLA', arch='test'),
    'vmamba_t': dict(type='VMamba', arch='tiny'),
    'vmamba_s': dict(type='VMamba', arch='small'),
    'vmamba_b': dict(type='VMamba', arch='base'),
    'vmamba_test': dict(type='VMamba', arch='test'),
}


def _registries():
    found = {}
    for library in ('mmdet', 'mmseg'):
        try:
            found[library] = importlib.import_module(f'{library}.registry').MODELS
        except ImportError:
            continue
    return found


REGISTERED_IN = _registries()
for _registry in REGISTERED_IN.values():
    for _name, _cls in BACKBONES.items():
        _registry.register_module(name=_name, module=_cls, force=True)

from .swap import swap_backbone  # noqa: E402  (reads the tables above)

__all__ = ['BACKBONES', 'BACKBONE_NAMES', 'MLLABackbone', 'REGISTERED_IN', 'VMambaBackbone', 'swap_backbone']
