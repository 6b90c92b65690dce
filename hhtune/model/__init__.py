"""The HappyHorse transformer, its config and checkpoint I/O.

The super-resolution stages are the same transformer run as another variant:

* ``HappyHorseTransformer(ModelConfig.preset("tiny", "sr_1080p"))`` builds one (random weights);
* ``load_variant(path, "sr_540p" | "sr_1080p", device=..., dtype=...)`` loads the official ``540p_sr/`` or
  ``1080p_sr/`` folder, refusing a checkpoint of another stage (``check_variant``, ``detect_variant``);
* calling the model (``model(video, audio, text)``) packs with the config's ``coords_style`` (``v1`` for SR)
  and runs its local layers; ``pack_sample(..., coords_style=model.config.coords_style)`` packs for
  ``forward_packed``.
"""

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
