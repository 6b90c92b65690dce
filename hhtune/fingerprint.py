"""Base-model fingerprint: which weights an adapter was trained against.

A hash of every tensor's name, shape and dtype plus a fixed sample of values from a
few block weights. It is the same for a model in memory (plain or wrapped by PEFT)
and for the checkpoint folder it was saved to, and reading it from a 15B checkpoint
touches only the sampled tensors.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

_SAMPLED = ("adapter.video_embedder.weight", "final_linear_video.weight")
_SAMPLE_LAYERS_EVERY = 8


def _sampled_keys(keys: list[str]) -> list[str]:
    chosen = [k for k in _SAMPLED if k in keys]
    for k in keys:
        if k.endswith("attention.linear_qkv.weight") and int(k.split(".")[2]) % _SAMPLE_LAYERS_EVERY == 0:
            chosen.append(k)
    return chosen


def _sample(t: torch.Tensor) -> bytes:
    flat = t.reshape(-1)
    k = min(256, flat.numel())
    idx = torch.arange(k, dtype=torch.int64) * (flat.numel() - 1) // max(k - 1, 1)  # integer maths: exact for 15B tensors
    return flat[idx].to(torch.float32).numpy().tobytes()


def base_fingerprint(source: torch.nn.Module | str | os.PathLike) -> str:
    """Fingerprint of a model's base weights or of a checkpoint (folder or file)."""
    h = hashlib.sha256()
    if isinstance(source, torch.nn.Module):
        base = source.get_base_model() if hasattr(source, "get_base_model") else source
        state = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
        meta = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()}
        get = state.__getitem__
    else:
        from .model.checkpoint import checkpoint_files, read_shapes

        shapes = read_shapes(source)
        meta = {k: (s, _DTYPES.get(d, d)) for k, (s, d) in shapes.items()}
        files = checkpoint_files(source)

        def get(key: str) -> torch.Tensor:
            from safetensors import safe_open

            for f in files:
                with safe_open(f, framework="pt") as sf:
                    if key in sf.keys():
                        return sf.get_tensor(key)
            raise KeyError(key)

    keys = sorted(meta)
    for k in keys:
        h.update(f"{k}:{list(meta[k][0])}:{meta[k][1]};".encode())
    for k in _sampled_keys(keys):
        h.update(_sample(get(k)))
    return h.hexdigest()[:32]


_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F8_E4M3": "float8_e4m3fn", "I64": "int64"}
