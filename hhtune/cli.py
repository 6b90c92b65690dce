r"""One way for every command line to end: the same exit codes and one ``error:`` line.

Every entry point (``hhtune/train.py``, ``python -m hhtune.sample``, ``hhtune.export``,
``hhtune.plan``, ``python -m hhtune.convert``, ``python -m data_prep``) runs its body through :func:`run_command`:

| exit code | meaning | examples |
| --- | --- | --- |
| 0 | done | |
| 1 | the run failed after it started | non-finite losses, a crashed worker, a bug (traceback printed) |
| 2 | bad input: nothing was run | a recipe typo, a missing file, an adapter for another model, bad arguments |
| 3 | the machine lacks something | ffmpeg, espeak-ng or a Python package is missing; the message has the install command |
| 4 | out of memory | the device could not hold the step; the message points at ``python -m hhtune.plan`` |
| 130 | interrupted | Ctrl-C; SIGTERM to a training run (it checkpoints first) |

The first line on stderr is always ``error: <what happened>``; further lines (a recipe's
list of bad keys) are indented details. The classes that count as bad input are the
``ValueError``\ s the toolkit raises (``RecipeError``, ``AdapterError``, ``BuildError``,
``DatasetError`` ..., or a plain ``ValueError`` raised by its own checks) and file-system
errors; a ``ValueError`` from inside a library is a failure with its traceback, not
something the user typed.
"""  # noqa: E501 -- a Markdown table: one row per line

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_MISSING_DEPENDENCY = 3
EXIT_OUT_OF_MEMORY = 4
EXIT_INTERRUPTED = 130

_OUR_PACKAGES = ("hhtune", "data_prep")
_OOM_HINT = ("the step did not fit in device memory: run `python -m hhtune.plan RECIPE.yaml --gpu-memory GB` for "
             "settings that fit (gradient checkpointing, model.blocks_to_swap, "
             "model.activation_offload, FP8 base)")  # fmt: skip


class MissingDependencyError(RuntimeError):
    """A system tool or Python package the command needs is not installed; the message says how to install it."""


def _ours(exc: BaseException) -> bool:
    """Whether the toolkit raised ``exc``: its class is ours, or the innermost frame that raised it is our code."""
    if type(exc).__module__.split(".")[0] in _OUR_PACKAGES:
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0] in _OUR_PACKAGES


def exit_code(exc: BaseException) -> int:
    """The exit code for an exception that ended a command (see the module table)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return EXIT_OUT_OF_MEMORY
    if isinstance(exc, (MissingDependencyError, ModuleNotFoundError)):
        return EXIT_MISSING_DEPENDENCY
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return EXIT_BAD_INPUT
    if isinstance(exc, ValueError) and _ours(exc):
        return EXIT_BAD_INPUT
    return EXIT_FAILED


def error_text(exc: BaseException) -> str:
    """``error: <first line>`` followed by the message's further lines, indented."""
    if isinstance(exc, KeyboardInterrupt) and not str(exc):  # Ctrl-C; a SIGTERM stop says where it stopped
        return "error: interrupted; re-run the same command to resume where it can"
    if exit_code(exc) == EXIT_OUT_OF_MEMORY:
        return f"error: {_OOM_HINT} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    message = str(exc) or type(exc).__name__
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        message = (f"the Python package {exc.name!r} is not installed: pip install -e . in the project's environment "
                   f"({message})")
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in message:
        message = f"{message}: {exc.filename}"
    first, *rest = message.strip().splitlines() or [type(exc).__name__]
    return "\n".join([f"error: {first}", *(f"  {line.strip()}" for line in rest if line.strip())])


def run_command(body: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command's ``body(argv)`` and turn how it ended into an exit code and one ``error:`` line.

    ``SystemExit`` (argparse's usage errors, a command's deliberate exit) passes through
    unchanged; unexpected failures (code 1 that is not one of ours) also print the traceback,
    because they are bugs to report rather than inputs to fix.
    """
    try:
        return int(body(argv) or 0)
    except SystemExit:
        raise
    except BaseException as exc:  # every way out gets one code and one line
        code = exit_code(exc)
        if code == EXIT_FAILED and not _ours(exc):
            traceback.print_exc(file=sys.stderr)
        print(error_text(exc), file=sys.stderr)
        return code
