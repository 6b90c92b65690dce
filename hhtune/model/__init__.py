"""The HappyHorse transformer, its config and checkpoint I/O."""

from .checkpoint import CheckpointError, infer_config, load_checkpoint, load_state_dict_file, save_checkpoint
from .config import ModelConfig
from .packing import Modality, pack_sample, unpack_sample
from .transformer import HappyHorseTransformer

__all__ = [
    "CheckpointError",
    "HappyHorseTransformer",
    "Modality",
    "ModelConfig",
    "infer_config",
    "load_checkpoint",
    "load_state_dict_file",
    "pack_sample",
    "save_checkpoint",
    "unpack_sample",
]
