"""A training checkpoint (``RUN_DIR/checkpoints/step-NNNNNNNN``) read as an adapter.

A checkpoint stores the adapter as PEFT's saved state dict (``adapter.safetensors``, keys
``base_model.model.<path>.lora_A.weight``) beside the optimizer state, but no
``adapter_config.json``: rank, alpha and rsLoRA come from the run fingerprint stored with it
(``fingerprint.json``, flat ``lora.*`` keys) or, for older checkpoints, the run's ``recipe.yaml``.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from safetensors.torch import load_file

from ..settings import LoraSettings
from .peft import from_peft_state
from .weights import AdapterError, LoraWeights

CHECKPOINT_WEIGHTS = "adapter.safetensors"
CHECKPOINT_MARKER = "state.json"


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a complete training checkpoint folder."""
    path = Path(path)
    return (path / CHECKPOINT_MARKER).is_file() and (path / CHECKPOINT_WEIGHTS).is_file()


def adapter_from_checkpoint(path: str | Path) -> LoraWeights:
    """The LoRA weights of training checkpoint ``path``, with the training step in the metadata."""
    path = Path(path)
    if not is_checkpoint(path):
        raise AdapterError(f"{path} is not a training checkpoint (no {CHECKPOINT_MARKER} and {CHECKPOINT_WEIGHTS})")
    settings = _lora_settings(path)
    cfg = {"r": settings.rank, "lora_alpha": settings.effective_alpha, "use_rslora": settings.use_rslora}
    w = from_peft_state(load_file(path / CHECKPOINT_WEIGHTS), cfg, str(path))
    try:
        w.metadata.training_steps = int(json.loads((path / CHECKPOINT_MARKER).read_text())["step"])
    except (ValueError, KeyError, TypeError):
        pass
    w.metadata.rank = settings.rank
    w.metadata.use_rslora = settings.use_rslora
    return w


def _lora_settings(path: Path) -> LoraSettings:
    """The run's ``lora`` recipe section: from the checkpoint's fingerprint, else the run's recipe.yaml."""
    section: dict | None = None
    fingerprint = path / "fingerprint.json"
    if fingerprint.is_file():
        flat = json.loads(fingerprint.read_text())
        section = {k.removeprefix("lora."): v for k, v in flat.items() if k.startswith("lora.")} or None
    recipe = path.parent.parent / "recipe.yaml"
    if section is None and recipe.is_file():
        section = (yaml.safe_load(recipe.read_text()) or {}).get("lora")
    if section is None:
        raise AdapterError(f"{path}: no fingerprint.json and no recipe.yaml in the run folder, so rank and alpha of "
                           "its adapter are unknown")  # fmt: skip
    return LoraSettings(**{k: v for k, v in section.items() if k in LoraSettings.model_fields})
