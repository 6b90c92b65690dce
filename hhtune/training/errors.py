"""The training loop's error types (their own module so every training module can raise them).

Which class a check raises decides the exit code (:mod:`hhtune.cli`): :class:`RecipeConflict`
is bad input (2: nothing was run, change the recipe or the launch), :class:`TrainingError` a
run that failed after it started (1), :class:`RunInterrupted` a run stopped by a signal after
it saved its state (130).
"""

from __future__ import annotations


class TrainingError(RuntimeError):
    """The run had to stop; the message says why and how to continue."""


class RecipeConflict(ValueError):  # noqa: N818 -- public name; the base class says error
    """Settings that cannot run together, with this launch, or on this dataset or checkpoint; found before training."""


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM stopped the run at a step boundary after a checkpoint was written; re-running resumes."""
