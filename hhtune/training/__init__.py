"""Training: recipe checks, dataset batches, the flow-matching objective, the loop and its resumable state."""

from ..dataset import DatasetError
from .builders import build_model
from .callbacks import Callback
from .data import Batch, TrainingDataset
from .errors import RecipeConflict, RunInterrupted, TrainingError
from .objective import flow_matching_loss, shift_sigma
from .state import CheckpointLoadError
from .trainer import LoraTrainer, train

__all__ = ["Batch", "Callback", "CheckpointLoadError", "DatasetError", "LoraTrainer", "RecipeConflict",
           "RunInterrupted", "TrainingDataset", "TrainingError", "build_model", "flow_matching_loss", "shift_sigma",
           "train"]  # fmt: skip
