"""The HappyHorse transformer, its config and checkpoint I/O."""

from .checkpoint import CheckpointError, infer_config, load_checkpoint, load_state_dict_file, save_checkpoint
from .config import ModelConfig
from .packing import Modality, pack_sample, unpack_sample
from .transformer import HappyHorseTransformer
from .variants import DetectedVariant, check_variant, detect_variant, load_variant

__all__ = [
    "CheckpointError",
    "DetectedVariant",
    "HappyHorseTransformer",
    "Modality",
    "ModelConfig",
    "check_variant",
    "detect_variant",
    "infer_config",
    "load_checkpoint",
    "load_state_dict_file",
    "load_variant",
    "pack_sample",
    "save_checkpoint",
    "unpack_sample",
]
