"""Which published checkpoint a folder holds (base, distill, 540p or 1080p SR), and loading one as a variant.

The four official DiT checkpoints (``base/``, ``distill/``, ``540p_sr/``, ``1080p_sr/``) have the same keys
and shapes: only the weights, and how they are run, differ (``ModelConfig.with_variant``). What tells
them apart on disk, strongest first:

1. ``hhtune_config.json`` beside the weights (written by :func:`~hhtune.model.checkpoint.save_checkpoint`):
   its ``coords_style`` and ``local_attn_layers`` name the SR variant, or a first-stage model;
2. the folder's official name: ``base``, ``distill``, ``540p_sr``, ``1080p_sr`` (also with an ``_fp8``
   suffix, as community FP8 conversions name them, and ``sr_540p``/``sr_1080p``);
3. the storage dtype of the block linears: the official ``base/`` stores them in bf16, while
   ``distill/`` and both SR checkpoints store fp32 (so fp32 alone decides nothing).

:func:`check_variant` refuses a first-stage checkpoint where an SR one is expected, the reverse, and one SR
resolution for the other, naming what it found. When nothing decides, it lets the checkpoint through.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..contract import SR_VARIANTS, VARIANTS
from .checkpoint import CheckpointError, infer_config, load_checkpoint, read_shapes, saved_config
from .transformer import HappyHorseTransformer

_OFFICIAL_NAMES = {"base": "base", "distill": "distill", "540p_sr": "sr_540p", "1080p_sr": "sr_1080p",
                   "sr_540p": "sr_540p", "sr_1080p": "sr_1080p"}  # fmt: skip
_PROBE_KEY = re.compile(r"block\.layers\.\d+\.attention\.linear_qkv\.weight$")


@dataclass(frozen=True)
class DetectedVariant:
    """What a checkpoint looks like: ``variant`` when one is named, ``sr`` (True: an SR stage, False: a
    first-stage model, None: unknown), and the evidence in words."""

    variant: str | None
    sr: bool | None
    evidence: str

    @property
    def layout(self) -> str:
        """The layout in words, for messages."""
        if self.variant is not None:
            return f"the {self.variant} layout"
        return {True: "a super-resolution layout", False: "a first-stage (base or distill) layout",
                None: "an unknown layout"}[self.sr]  # fmt: skip


def detect_variant(path: str | os.PathLike) -> DetectedVariant:
    """Which published checkpoint ``path`` (a folder or a ``.safetensors`` file) holds, from the evidence above."""
    config = saved_config(path)
    if config is not None:
        sr = config.sr_variant
        return DetectedVariant(sr, sr is not None, f"its hhtune_config.json has coords_style={config.coords_style!r}"
                               f" and {len(config.local_attn_layers)} local attention layers")  # fmt: skip
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    name = re.sub(r"_fp8$", "", folder.name.lower())
    if name in _OFFICIAL_NAMES:
        variant = _OFFICIAL_NAMES[name]
        return DetectedVariant(variant, variant in SR_VARIANTS, f"its folder has the official name {folder.name!r}")
    dtypes = {dtype for key, (_, dtype) in read_shapes(path).items() if _PROBE_KEY.search(key)}
    if dtypes == {"BF16"}:
        return DetectedVariant("base", False, "its block linears are stored in bf16, as in the official base/ "
                               "(distill/ and the SR checkpoints store fp32)")  # fmt: skip
    return DetectedVariant(None, None, "neither an hhtune_config.json, an official folder name nor the storage "
                           "dtype tells the published checkpoints apart")  # fmt: skip


def check_variant(path: str | os.PathLike, expected: str) -> DetectedVariant:
    """Raise :class:`CheckpointError` when ``path`` is not the ``expected`` variant (first stage vs SR, or the
    other SR resolution), naming the layout found and why; return what was detected otherwise."""
    if expected not in VARIANTS:
        raise ValueError(f"unknown model variant {expected!r}; allowed: {', '.join(VARIANTS)}")
    found = detect_variant(path)
    want_sr = expected in SR_VARIANTS
    conflict = (found.sr is not None and found.sr != want_sr) or (
        want_sr and found.variant in SR_VARIANTS and found.variant != expected)
    if conflict:
        wanted = f"the {expected} super-resolution checkpoint" if want_sr else "a base or distill checkpoint"
        raise CheckpointError(f"{path} has {found.layout} ({found.evidence}), but {wanted} was expected; "
                              f"point to the official {_folder_of(expected)}/ folder")  # fmt: skip
    return found


def load_variant(path: str | os.PathLike, variant: str, **load_kwargs) -> HappyHorseTransformer:
    """Load the published checkpoint ``variant`` from ``path`` (official layout, strict key checks).

    The architecture is the saved ``hhtune_config.json`` if there is one, else inferred from the tensor
    shapes and run as ``variant`` (:meth:`~hhtune.model.ModelConfig.with_variant`: v1 coordinates for
    SR, local attention for ``sr_1080p``). ``load_kwargs`` go to :func:`~hhtune.model.load_checkpoint`.
    Raises :class:`CheckpointError` for a checkpoint of another stage (:func:`check_variant`).
    """
    check_variant(path, variant)
    config = saved_config(path) or infer_config(read_shapes(path)).with_variant(variant)
    return load_checkpoint(path, config=config, **load_kwargs)


def _folder_of(variant: str) -> str:
    return next(name for name, v in _OFFICIAL_NAMES.items() if v == variant)

