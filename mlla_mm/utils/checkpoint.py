"""Loading upstream checkpoints into our models: by key, with a clear report, never silently partial."""
import logging
import os
import pickle

import torch

logger = logging.getLogger('mlla_mm')

STATE_DICT_KEYS = ('state_dict', 'model', 'state_dict_ema')
# Added by DataParallel wrappers and by detector/segmentor checkpoints around the backbone's own keys.
WRAPPER_PREFIXES = ('module.', 'backbone.')


class CheckpointMismatchError(RuntimeError):
    """A checkpoint that does not fit the model: nothing matched, weights missing, or shapes differ."""


def read_state_dict(path: str) -> dict:
    """The tensor dict of a checkpoint file: its ``state_dict``, ``model`` or ``state_dict_ema`` entry (first
    found, in that order), or the file itself when it is a raw state dict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        # Upstream training checkpoints also pickle their yacs config; the user named this file, so trust it.
        logger.info('checkpoint %s holds more than tensors (e.g. a training config); loading it with '
                    'weights_only=False', path)
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    if not isinstance(checkpoint, dict):
        raise CheckpointMismatchError(f'{path} holds a {type(checkpoint).__name__}, not a state dict')
    for key in STATE_DICT_KEYS:
        if isinstance(checkpoint.get(key), dict):
            logger.info('checkpoint %s: using its %r entry', path, key)
            return checkpoint[key]
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise CheckpointMismatchError(f'{path} has none of the entries {STATE_DICT_KEYS} and is not a raw state dict; '
                                  f'top-level keys: {sorted(checkpoint)[:20]}')


def strip_wrapper_prefixes(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_state_dict_reported(model: torch.nn.Module, state_dict: dict, allowed_missing=(), source='state dict'):
    """Load ``state_dict`` (already filtered to the model's naming) into ``model``.

    Logs missing and unexpected keys. Raises CheckpointMismatchError when no key matches, when a model weight
    other than those whose names start with one of ``allowed_missing`` is missing, or when shapes differ.
    """
    own = model.state_dict()
    matched = [k for k in state_dict if k in own]
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if not matched:
        raise CheckpointMismatchError(
            f'no weight of {source} matches {type(model).__name__}. First checkpoint keys: '
            f'{list(state_dict)[:10]}; first model keys: {list(own)[:10]}')
    wrong_shape = [f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}'
                   for k in matched if state_dict[k].shape != own[k].shape]
    if wrong_shape:
        raise CheckpointMismatchError(f'{source} does not fit {type(model).__name__}: shapes differ for '
                                      f'{wrong_shape}')
    not_allowed = [k for k in missing if not k.startswith(tuple(allowed_missing))]
    if not_allowed:
        raise CheckpointMismatchError(
            f'{source} misses {len(not_allowed)} weights of {type(model).__name__}: {not_allowed}'
            + (f'; unexpected keys: {unexpected}' if unexpected else ''))
    model.load_state_dict(state_dict, strict=False)
    logger.info('loaded %d/%d tensors from %s', len(matched), len(own), source)
    if missing:
        logger.info('missing keys (left at their initial values): %s', missing)
    if unexpected:
        logger.warning('unexpected keys (ignored): %s', unexpected)
    return missing, unexpected
