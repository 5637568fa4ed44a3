"""Named model constructors (timm style): ``create_model('mlla_t')``."""
_ENTRYPOINTS = {}


def register_model(fn):
    if fn.__name__ in _ENTRYPOINTS:
        raise ValueError(f'model {fn.__name__!r} is registered twice')
    _ENTRYPOINTS[fn.__name__] = fn
    return fn


def list_models():
    return sorted(_ENTRYPOINTS)


def create_model(name: str, **kwargs):
    """Build a registered model by name; kwargs go to its constructor."""
    if name not in _ENTRYPOINTS:
        raise KeyError(f'unknown model {name!r}; known models: {", ".join(list_models())}')
    return _ENTRYPOINTS[name](**kwargs)
