from .checkpoint import (CheckpointMismatchError, CheckpointReadError, load_checkpoint, load_state_dict_reported,
                         log_report, read_checkpoint, read_state_dict, strip_wrapper_prefixes)
from .checks import check_images

__all__ = ['CheckpointMismatchError', 'CheckpointReadError', 'check_images', 'load_checkpoint',
           'load_state_dict_reported', 'log_report', 'read_checkpoint', 'read_state_dict', 'strip_wrapper_prefixes']
