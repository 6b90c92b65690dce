"""Reading an adapter in any supported format, told apart by what the path holds."""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from .checkpoint import adapter_from_checkpoint, is_checkpoint
from .modelspec import check_architecture, read_metadata
from .peft import PEFT_KEY_PREFIX, read_peft_folder
from .single import read_single
from .weights import AdapterError, LoraWeights


def read_adapter(path: str | Path) -> LoraWeights:
    """Read any supported adapter: a PEFT folder (ours or PEFT's own), a ComfyUI, kohya / musubi-tuner
    or Wan2GP file, a RUN_DIR, or a training checkpoint (``RUN_DIR/checkpoints/step-NNNNNNNN``)."""
    path = Path(path)
    if is_checkpoint(path):
        return adapter_from_checkpoint(path)
    if path.is_dir() and (path / "adapter" / "adapter_config.json").is_file():
        path = path / "adapter"
    if path.is_dir():
        return read_peft_folder(path)
    if not path.is_file():
        raise AdapterError(f"adapter not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
            header = dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several types for foreign or truncated files
        raise AdapterError(f"{path} is not a safetensors file ({e})") from e
    check_architecture(header, str(path))
    if any(k.startswith(PEFT_KEY_PREFIX) for k in keys):
        raise AdapterError(f"{path} holds PEFT-style keys without adapter_config.json; pass the whole PEFT folder")
    if not any(k.endswith((".lora_A.weight", ".lora_down.weight")) for k in keys):
        raise AdapterError(
            f"{path} is not a LoRA adapter (no lora_A/lora_B or lora_down/lora_up keys; it holds e.g. {keys[:2]}): "
            "a base checkpoint loads with hhtune.model.load_checkpoint"
        )
    w = read_single(path, keys)
    w.metadata = read_metadata(path, w.metadata)
    return w
