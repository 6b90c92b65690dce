"""Training: dataset batches, the flow-matching objective, the loop and its resumable state."""

from .data import Batch, DatasetError, TrainingDataset
from .objective import flow_matching_loss, shift_sigma
from .trainer import TrainingError, build_model, train

__all__ = ["Batch", "DatasetError", "TrainingDataset", "TrainingError", "build_model", "flow_matching_loss",
           "shift_sigma", "train"]  # fmt: skip
