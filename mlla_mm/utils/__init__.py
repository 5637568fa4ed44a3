from .checkpoint import CheckpointMismatchError, load_state_dict_reported, read_state_dict, strip_wrapper_prefixes
from .checks import check_images

__all__ = ['CheckpointMismatchError', 'check_images', 'load_state_dict_reported', 'read_state_dict',
           'strip_wrapper_prefixes']
