"""Loading upstream checkpoints into our models: by key, with a clear report, never silently partial, never running
code that a file carries unless the caller opts in.

Files are read through mmengine's ``CheckpointLoader`` (local paths, ``http(s)://`` and the other schemes it knows)
with ``weights_only=True`` plus an allow-list of the non-tensor objects that released upstream checkpoints pickle.
Every report goes to mmengine's logger (``print_log(..., logger='current')``), so it lands in a run's log file.
"""
import argparse
import logging
import os
import pickle

import torch

STATE_DICT_KEYS = ('state_dict', 'model', 'state_dict_ema', 'model_ema')
# Added by DataParallel wrappers and by detector/segmentor checkpoints around the backbone's own keys.
WRAPPER_PREFIXES = ('module.', 'backbone.')


class CheckpointMismatchError(RuntimeError):
    """A checkpoint that does not fit the model: nothing matched, weights missing or unexpected, or shapes differ."""


class CheckpointReadError(RuntimeError):
    """A checkpoint file that cannot be read: corrupted, truncated, or holding objects outside the allow-list."""


class CfgNode(dict):
    """Stands in for ``yacs.config.CfgNode`` (the training config that Swin-style ``main.py`` scripts save next to
    the weights: MLLA, VMamba, VSSD, Spatial-Mamba), so those files load with ``weights_only=True`` even where
    yacs is not installed. It is a plain dict: nothing of it runs."""


# The non-tensor globals that released upstream checkpoints pickle (see reference/*.md): timm-style training
# scripts save an argparse Namespace under 'args' (Vim, MambaVision), Swin-style ones a yacs CfgNode under 'config'.
SAFE_GLOBALS = [argparse.Namespace, (CfgNode, 'yacs.config.CfgNode')]


class _AllowListUnpickler(pickle.Unpickler):
    """Resolves only torch's weights-only globals and SAFE_GLOBALS; anything else raises. torch's weights-only
    unpickler cannot fill a dict subclass such as a yacs CfgNode (it only SETITEMs plain dicts), so files holding
    one are read with this instead: the same allow-list idea, with pickle's own dict handling."""

    def find_class(self, module, name):
        import torch._weights_only_unpickler as weights_only
        qualified = f'{module}.{name}'
        allowed = dict(weights_only._get_allowed_globals())
        allowed.update({(g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}'):
                        (g[0] if isinstance(g, tuple) else g) for g in SAFE_GLOBALS})
        if qualified not in allowed:
            raise pickle.UnpicklingError(f'global {qualified} is not on the allow-list')
        return allowed[qualified]


class _AllowListPickleModule:
    Unpickler = _AllowListUnpickler
    load = pickle.load


def log_report(message: str, level: str = 'INFO'):
    """Report to mmengine's current logger (a run's log file) where mmengine is installed, else to 'mlla_mm'."""
    try:
        from mmengine.logging import print_log
    except ImportError:
        logging.getLogger('mlla_mm').log(getattr(logging, level), message)
        return
    print_log(message, logger='current', level=getattr(logging, level))


def read_checkpoint(path: str, allow_code_execution: bool = False) -> dict:
    """Read a checkpoint file or URL into a dict.

    Args:
        path: local path or any URL mmengine's CheckpointLoader knows.
        allow_code_execution: unpickle the file with ``weights_only=False``. This EXECUTES whatever code the file
            carries; only for files you trust, and only for local paths.
    Raises:
        FileNotFoundError: no such local file (naming it and the opt-out ``init_cfg=None``).
        CheckpointReadError: the file is corrupted, or holds objects outside the allow-list.
    """
    path = str(path)
    remote = '://' in path
    if not remote and not os.path.isfile(os.path.expanduser(path)):
        raise FileNotFoundError(f'checkpoint file not found: {path}. Download it (see configs/README.md), fix the '
                                f'path, or set init_cfg=None to train from random weights on purpose.')
    if allow_code_execution:
        if remote:
            raise CheckpointReadError(f'{path}: allow_code_execution is only for local files; download it first')
        log_report(f'loading {path} with weights_only=False: code pickled in this file is executed', 'WARNING')
        return torch.load(os.path.expanduser(path), map_location='cpu', weights_only=False)
    from mmengine.runner import CheckpointLoader
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = CheckpointLoader.load_checkpoint(path, map_location='cpu', logger='current')
    except Exception as error:  # torch.load raises many types for a bad file; name the file whatever it was
        if 'Weights only load failed' in str(error) and not remote:
            try:
                return torch.load(os.path.expanduser(path), map_location='cpu', weights_only=False,
                                  pickle_module=_AllowListPickleModule)
            except pickle.UnpicklingError as refusal:
                error = refusal
        if 'Weights only load failed' in str(error) or 'not on the allow-list' in str(error):
            raise CheckpointReadError(
                f'{path} pickles objects outside the allow-list of mlla_mm.utils.checkpoint.SAFE_GLOBALS. If you '
                f'trust the file, load it with allow_code_execution=True (this executes code in the file), or '
                f'save its weights alone. ({str(error).splitlines()[0]})') from error
        raise CheckpointReadError(f'cannot read checkpoint {path}: it is corrupted, truncated or not a PyTorch '
                                  f'checkpoint ({type(error).__name__}: {error})') from error
    return checkpoint


def state_dict_of(checkpoint, source: str, key: str = None) -> dict:
    """The tensor dict of a loaded checkpoint: its ``key`` entry when given, else the first of
    ``STATE_DICT_KEYS`` it has, else the checkpoint itself when it is a raw state dict."""
    if not isinstance(checkpoint, dict):
        raise CheckpointMismatchError(f'{source} holds a {type(checkpoint).__name__}, not a state dict')
    keys = (key,) if key else STATE_DICT_KEYS
    for entry in keys:
        if isinstance(checkpoint.get(entry), dict):
            log_report(f'checkpoint {source}: using its {entry!r} entry')
            return checkpoint[entry]
    if key:
        raise CheckpointMismatchError(f'{source} has no {key!r} entry; top-level keys: {sorted(checkpoint)[:20]}')
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise CheckpointMismatchError(f'{source} has none of the entries {STATE_DICT_KEYS} and is not a raw state dict; '
                                  f'top-level keys: {sorted(checkpoint)[:20]}')


def read_state_dict(path: str, key: str = None, allow_code_execution: bool = False) -> dict:
    """``state_dict_of(read_checkpoint(path))``."""
    return state_dict_of(read_checkpoint(path, allow_code_execution), path, key)


def strip_wrapper_prefixes(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_state_dict_reported(model: torch.nn.Module, state_dict: dict, allowed_missing=(), source='state dict'):
    """Load ``state_dict`` (already filtered to the model's naming) into ``model``, strictly.

    Raises CheckpointMismatchError when no key matches, when shapes differ, when a model weight is missing (other
    than those whose names start with one of ``allowed_missing``), or when the state dict has weights the model
    does not (a deeper or wider checkpoint). The family filters drop by name what a model legitimately lacks
    (classifier heads, recomputed tables) before this is called. Returns the missing (allowed) keys.
    """
    own = model.state_dict()
    matched = [k for k in state_dict if k in own]
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    name = type(model).__name__
    if not matched:
        raise CheckpointMismatchError(
            f'no weight of {source} matches {name}. First checkpoint keys: {list(state_dict)[:10]}; first model '
            f'keys: {list(own)[:10]}')
    wrong_shape = [f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}'
                   for k in matched if state_dict[k].shape != own[k].shape]
    if wrong_shape:
        raise CheckpointMismatchError(f'{source} does not fit {name}: shapes differ for {wrong_shape}')
    if unexpected:
        raise CheckpointMismatchError(
            f'{source} has {len(unexpected)} weights that {name} does not (a deeper or wider model?): '
            f'{unexpected[:20]}{" ..." if len(unexpected) > 20 else ""}')
    not_allowed = [k for k in missing if not k.startswith(tuple(allowed_missing))]
    if not_allowed:
        raise CheckpointMismatchError(f'{source} misses {len(not_allowed)} weights of {name}: {not_allowed[:20]}'
                                      f'{" ..." if len(not_allowed) > 20 else ""}')
    model.load_state_dict(state_dict, strict=False)
    log_report(f'loaded {len(matched)}/{len(own)} tensors into {name} from {source}')
    if missing:
        log_report(f'missing keys (left at their initial values): {missing}')
    return missing


def load_checkpoint(model: torch.nn.Module, path: str, checkpoint_filter=None, allowed_missing=(), key: str = None,
                    allow_code_execution: bool = False):
    """Read ``path``, map it through ``checkpoint_filter(state_dict, model)`` and load it strictly (see
    ``load_state_dict_reported``). Returns the missing (allowed) keys."""
    state_dict = read_state_dict(path, key, allow_code_execution)
    if checkpoint_filter is not None:
        state_dict = checkpoint_filter(state_dict, model)
    return load_state_dict_reported(model, state_dict, allowed_missing, source=path)
