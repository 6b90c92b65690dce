"""Training: dataset batches, the flow-matching objective, the loop and its resumable state."""

from ..dataset import DatasetError
from .callbacks import Callback
from .data import Batch, TrainingDataset
from .errors import TrainingError
from .objective import flow_matching_loss, shift_sigma
from .state import CheckpointLoadError
from .trainer import build_model, train

__all__ = ["Batch", "Callback", "CheckpointLoadError", "DatasetError", "TrainingDataset", "TrainingError",
           "build_model", "flow_matching_loss", "shift_sigma", "train"]  # fmt: skip
