"""The one progress bar of hhtune's commands (training, data preparation): a rich bar that can be switched off.

A switched-off bar (another process than the main one, ``--no-progress``) takes the same calls
and shows nothing, so callers never branch on whether a bar is shown.
"""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressBar:
    """``description  ━━━━━━  done/total  status  elapsed  remaining``, as a context manager.

    ``status`` is a short free text shown after the count (the training loss, for example).
    """

    def __init__(self, description: str, total: int, *, completed: int = 0, enabled: bool = True) -> None:
        self.enabled = enabled and total > 0
        self._description, self._total, self._completed = description, total, completed

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                 TimeRemainingColumn())  # fmt: skip
            self._bar.__enter__()
            self._task = self._bar.add_task(self._description, total=self._total, completed=self._completed, status="")
        return self

    def advance(self, n: int = 1) -> None:
        """``n`` more items are done."""
        if self.enabled:
            self._bar.advance(self._task, n)

    def update(self, completed: int, status: str = "") -> None:
        """``completed`` items are done; ``status`` replaces the text after the count."""
        if self.enabled:
            self._bar.update(self._task, completed=completed, status=status)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.__exit__(*exc)
