"""OpenMMLab adapters. Importing this module registers one backbone type per model family (``MLLA``, ``VMamba``, ...,
from the model registry) and ``TimmBackbone`` into ``mmdet.registry.MODELS`` and ``mmseg.registry.MODELS``, each
only where that library can be imported. A name that another package registered already is never replaced: the clash
raises, naming both.

Configs reach it with ``custom_imports=dict(imports=['mlla_mm.mm'], allow_failed_imports=False)``;
``tools/train.py`` and ``tools/test.py`` import it themselves.
"""
import importlib

from mlla_mm.models import list_families

from .backbone import FamilyBackbone, TimmBackbone, backbone_class

# Registered type name -> class: one per model family, plus the timm bridge.
BACKBONES = {name: backbone_class(family) for name, family in list_families().items()}
BACKBONES['TimmBackbone'] = TimmBackbone

# Short names (`tools/train.py --backbone NAME`) -> backbone config: every model name of every family. Any timm model
# is reachable as 'timm:NAME'.
BACKBONE_NAMES = {model: dict(type=family.name, arch=arch)
                  for family in list_families().values() for arch, model in family.archs.items()}


def _registries():
    found = {}
    for library in ('mmdet', 'mmseg'):
        try:
            found[library] = importlib.import_module(f'{library}.registry').MODELS
        except ImportError:
            continue
    return found


def register(registry, name, cls):
    """Register ``cls`` as ``name`` unless this very class is there already; a clash with another module raises."""
    existing = registry._module_dict.get(name)
    if existing is None:
        registry.register_module(name=name, module=cls)
    elif existing is not cls and f'{existing.__module__}.{existing.__qualname__}' != f'{cls.__module__}.{cls.__qualname__}':
        raise KeyError(f'{registry.scope}.registry.MODELS already has {name!r} from {existing.__module__}.'
                       f'{existing.__qualname__}; mlla_mm will not replace it with {cls.__module__}.{cls.__qualname__}')


REGISTERED_IN = _registries()
for _registry in REGISTERED_IN.values():
    for _name, _cls in BACKBONES.items():
        register(_registry, _name, _cls)

from .swap import swap_backbone  # noqa: E402  (reads the tables above)

__all__ = ['BACKBONES', 'BACKBONE_NAMES', 'FamilyBackbone', 'REGISTERED_IN', 'TimmBackbone', 'register',
           'swap_backbone']
