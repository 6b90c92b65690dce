"""Test helper: train a recipe with a callback that kills or signals its own process at a chosen point.

    python tests/training/_fault_run.py RECIPE.yaml FAULT

FAULT is ``kill@step:N`` / ``sigterm@step:N`` (after optimizer step N) or ``kill@save:N:FILE``
(while checkpoint N is written, right after FILE, e.g. optimizer.pt, landed in its temporary folder).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

# Run as a script, so the checkout this file is in is not on sys.path: put it first, or the faulted run would
# import whichever hhtune is installed while the run it is compared with (hhtune/train.py) uses the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hhtune.cli import run_command
from hhtune.recipe import load_recipe
from hhtune.training import Callback, train


class Fault(Callback):
    def __init__(self, spec: str) -> None:
        kind, where = spec.split("@", 1)
        self.signal = signal.SIGKILL if kind == "kill" else signal.SIGTERM
        self.point, _, rest = where.partition(":")
        self.step, _, self.file = rest.partition(":")
        self.step = int(self.step)

    def _fire(self) -> None:
        sys.stdout.flush()
        os.kill(os.getpid(), self.signal)

    def on_step_end(self, step: int) -> None:
        if self.point == "step" and step == self.step:
            self._fire()

    def on_checkpoint_file(self, step: int, path: Path) -> None:
        if self.point == "save" and step == self.step and path.name == self.file:
            self._fire()


def main() -> int:
    recipe_path, spec = sys.argv[1:3]

    def body(_argv: object) -> int:
        train(load_recipe(recipe_path), callbacks=[Fault(spec)])
        return 0

    return run_command(body)  # the exit codes and error line of hhtune/train.py


if __name__ == "__main__":
    sys.exit(main())
