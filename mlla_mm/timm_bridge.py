"""Our models in timm's own registry: ``import mlla_mm, timm; timm.create_model('mlla_t', features_only=True)``.

``import mlla_mm`` must stay light (timm imports triton and dynamo, about 3 s), so it does not import timm: where timm
is imported already, ``install()`` registers at once; otherwise it registers the moment timm finishes importing (a
one-shot import hook that removes itself). timm's training scripts then build our models like their own.
Pretrained weights come from a local file: ``timm.create_model('mlla_t', pretrained=True,
pretrained_cfg_overlay=dict(file='MLLA_T.pth'))`` (the family's checkpoint filter is applied).
"""
import functools
import importlib.abc
import importlib.util
import sys
import warnings

from mlla_mm.models import create_model, get_family, get_pretrained_cfg, list_models

# The fields of our pretrained cfgs that mean the same in timm's (timm's 'url' must be a direct download; ours may be
# a release page, so users give the file).
_TIMM_CFG_FIELDS = ('mean', 'std', 'input_size', 'crop_pct', 'num_classes')


def _timm_entrypoint(name: str):
    def entrypoint(pretrained=False, **kwargs):
        from timm.models import build_model_with_cfg
        return build_model_with_cfg(
            functools.partial(create_model, name), name, pretrained,
            pretrained_filter_fn=get_family(name).checkpoint_filter,
            # out_indices=4: the last four levels, i.e. all of them, where timm's default asks for five.
            feature_cfg=dict(feature_cls='getter', out_indices=4), **kwargs)
    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f'{name} from mlla_mm (timm-registered).'
    return entrypoint


# timm's register_model reads the pretrained cfgs of an entrypoint from its module's default_cfgs.
default_cfgs = {}


def register_all():
    """Register every mlla_mm model into timm's registry; a name timm already has from elsewhere is left alone."""
    from timm.models import is_model, model_entrypoint, register_model
    for name in list_models():
        cfg = get_pretrained_cfg(name)
        default_cfgs[name] = {k: cfg[k] for k in _TIMM_CFG_FIELDS if k in cfg}
        if is_model(name):
            if model_entrypoint(name).__module__ != __name__:
                warnings.warn(f'mlla_mm: timm already has a model {name!r} '
                              f'({model_entrypoint(name).__module__}); ours is not registered into timm')
            continue
        register_model(_timm_entrypoint(name))


class _RegisterAfterTimmImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when 'timm' is about to be imported, wraps its loader to register our models after."""

    def find_spec(self, fullname, path, target=None):
        if fullname != 'timm':
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec('timm')
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            register_all()

        spec.loader.exec_module = exec_then_register
        return spec


def install():
    if 'timm' in sys.modules:
        register_all()
    elif not any(isinstance(finder, _RegisterAfterTimmImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTimmImport())
