"""Hooks into the training loop, passed as ``train(recipe, callbacks=[...])``.

Subclass :class:`Callback` and override what you need. Hooks run on every process,
synchronously, in the order given; an exception raised by a hook stops the run.
Tests use them to kill or signal a run at an exact point (tests/training/_fault_run.py).
"""

from __future__ import annotations

from pathlib import Path


class Callback:
    """No-op base class: every hook does nothing unless overridden."""

    def on_step_end(self, step: int) -> None:
        """After optimizer step ``step`` (1-based) and its checkpoint/validation, if any."""

    def on_checkpoint_file(self, step: int, path: Path) -> None:
        """While checkpoint ``step`` is written: ``path`` (inside the temporary folder) was just written."""

    def on_save(self, step: int, path: Path) -> None:
        """Checkpoint ``step`` is complete at ``path``."""


class CallbackList(Callback):
    """Several callbacks called in order."""

    def __init__(self, callbacks: list[Callback] | tuple[Callback, ...] = ()) -> None:
        bad = [c for c in callbacks if not isinstance(c, Callback)]
        if bad:
            raise TypeError(f"callbacks must subclass hhtune.training.callbacks.Callback, got {bad!r}")
        self.callbacks = list(callbacks)

    def on_step_end(self, step: int) -> None:
        for c in self.callbacks:
            c.on_step_end(step)

    def on_checkpoint_file(self, step: int, path: Path) -> None:
        for c in self.callbacks:
            c.on_checkpoint_file(step, path)

    def on_save(self, step: int, path: Path) -> None:
        for c in self.callbacks:
            c.on_save(step, path)
