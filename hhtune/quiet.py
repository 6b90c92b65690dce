"""Dependency notices that tell a user nothing, filtered one by one where each entry point starts (training,
``python -m data_prep``, and each data_prep worker process, which does not inherit warning filters).

Each filter names the exact message or logger; anything else a dependency says still reaches the screen.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import sys
import warnings

_WARNINGS = (
    (FutureWarning, r"`torch\.nn\.utils\.weight_norm` is deprecated"),  # torch's own WeightNorm, in the audio codec
    (UserWarning, r"pkg_resources is deprecated as an API"),  # setuptools, on jieba's import of pkg_resources
)


def quiet_dependencies() -> None:
    """Filter the known start-up notices of hhtune's and data_prep's dependencies.

    * ``torch.nn.utils.weight_norm`` deprecation (FutureWarning) and setuptools' ``pkg_resources`` deprecation
      (UserWarning, raised when jieba imports it);
    * jieba's "Building prefix dict ... Loading model cost ..." (its ``jieba`` logger, at DEBUG);
    * pyopenjtalk-plus's "ONNX Runtime is not installed. Nani prediction will be disabled." (printed on import;
      the optional model refines readings of one kanji and is not needed for phonemes);
    * Hugging Face progress bars (``datasets``, ``huggingface_hub``) next to hhtune's own (:mod:`hhtune.progress`):
      off unless the user's ``HF_HUB_DISABLE_PROGRESS_BARS`` / ``HF_DATASETS_DISABLE_PROGRESS_BARS`` says otherwise
      (read when ``datasets`` is imported; switched off directly when it already is);
    * wandb's start-up banner and its end-of-run history and summary (an ASCII copy of ``loss_curve.png`` and
      ``metrics.jsonl``): ``WANDB_QUIET`` unless the user set it (an online run still prints its URL).
    """
    for category, message in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    if importlib.util.find_spec("jieba") is not None:
        import jieba  # noqa: PLC0415 -- optional, and its import sets its logger to DEBUG, so the level is set after it

        jieba.setLogLevel(logging.WARNING)
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("WANDB_QUIET", "true")
    if "datasets" in sys.modules and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1":
        sys.modules["datasets"].disable_progress_bars()
    if "pyopenjtalk" not in sys.modules and importlib.util.find_spec("pyopenjtalk") is not None:
        with contextlib.redirect_stdout(io.StringIO()):
            import pyopenjtalk  # noqa: F401, PLC0415 -- optional; imported once, here, so that its notice goes nowhere


__all__ = ["quiet_dependencies"]
