from .checkpoint import CheckpointMismatchError, load_state_dict_reported, read_state_dict

__all__ = ['CheckpointMismatchError', 'load_state_dict_reported', 'read_state_dict']
