"""The training loop's error type (its own module so every training module can raise it)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """The run had to stop; the message says why and how to continue."""
