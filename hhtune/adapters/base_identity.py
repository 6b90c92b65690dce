"""Base-model identity (:func:`base_model_id`): which base weights an adapter was trained against.

A hash of every tensor's name and shape plus a fixed sample of values (128 per tensor,
evenly spaced over the flattened tensor) from the embedders, the final linears and the
``linear_qkv`` / ``down_proj`` of every fourth layer. It is the same for

* a model in memory, plain or wrapped by PEFT (the base weights are used), on any device;
* the checkpoint folder or file it was saved to (read from the headers plus only the
  sampled rows, so identifying a 15B checkpoint reads a few MB);
* the same weights stored in bf16 or fp32 (sampled values are compared in bf16).

Adapter files record it under the ``base_fingerprint`` metadata key (and ``run_info.json``
under ``base_fingerprint``); the key keeps that name so files written before stay readable.

Different weights of the same architecture (the SR or distilled model against the base)
give different ids; so does an FP8-quantised copy, whose values are rounded.
"""

from __future__ import annotations

import hashlib
import math
import os
import re

import torch
from safetensors import safe_open

from ..model.checkpoint import FP8_SCALE_SUFFIX, checkpoint_files, read_shapes

_SAMPLED = ("adapter.video_embedder.weight", "adapter.audio_embedder.weight", "adapter.text_embedder.weight",
            "final_linear_video.weight", "final_linear_audio.weight")  # fmt: skip
_LAYER_KEY = re.compile(r"^block\.layers\.(\d+)\.(attention\.linear_qkv|mlp\.down_proj)\.weight$")
_EVERY = 4
_PER_TENSOR = 128


def base_model_id(source: torch.nn.Module | str | os.PathLike) -> str:
    """Identity (32 hex digits) of a model's base weights, or of a checkpoint folder or file."""
    if isinstance(source, torch.nn.Module):
        shapes, sample = _from_module(source)
    else:
        shapes, sample = _from_checkpoint(source)
    h = hashlib.sha256()
    keys = sorted(shapes)
    for k in keys:
        h.update(f"{k}:{list(shapes[k])};".encode())
    for k in _sampled_keys(keys):
        h.update(k.encode())
        h.update(sample(k).to(torch.bfloat16).float().numpy().tobytes())
    return h.hexdigest()[:32]


def _sampled_keys(keys: list[str]) -> list[str]:
    chosen = [k for k in _SAMPLED if k in keys]
    return chosen + [k for k in keys if (m := _LAYER_KEY.match(k)) and int(m.group(1)) % _EVERY == 0]


def _indices(shape: tuple[int, ...]) -> torch.Tensor:
    n = math.prod(shape)
    k = min(_PER_TENSOR, n)
    return torch.arange(k, dtype=torch.int64) * (n - 1) // max(k - 1, 1)  # integer maths: exact for any size


def _from_module(model: torch.nn.Module):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    tensors: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    for name, t in base.state_dict(keep_vars=True).items():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        tensors[key] = t
        owner = base.get_submodule(name.rsplit(".", 1)[0]) if "." in name else base
        if getattr(owner, "fp8_scale", None) is not None and name.endswith(".weight"):
            scales[key] = owner.fp8_scale  # FP8 storage: sample the dequantised values

    def sample(key: str) -> torch.Tensor:
        t = tensors[key].detach()
        idx = _indices(tuple(t.shape))
        values = t.reshape(-1)[idx.to(t.device)].float().cpu()
        return _dequantise(values, idx, t.shape, scales.get(key))

    return {k: tuple(v.shape) for k, v in tensors.items()}, sample


def _from_checkpoint(path: str | os.PathLike):
    info = read_shapes(path)
    shapes = {k: s for k, (s, _) in info.items() if not k.endswith(FP8_SCALE_SUFFIX)}
    files = checkpoint_files(path)

    def sample(key: str) -> torch.Tensor:
        for f in files:
            with safe_open(f, framework="pt") as sf:
                if key not in sf.keys():
                    continue
                scale = sf.get_tensor(key + FP8_SCALE_SUFFIX) if key + FP8_SCALE_SUFFIX in sf.keys() else None
                shape = shapes[key]
                idx = _indices(shape)
                values = _read_flat(sf.get_slice(key), shape, idx)
                return _dequantise(values, idx, shape, scale)
        raise KeyError(key)

    return shapes, sample


def _read_flat(sl, shape: tuple[int, ...], idx: torch.Tensor) -> torch.Tensor:
    """Elements ``idx`` of the flattened tensor, reading only the rows that hold them."""
    if len(shape) < 2:
        return sl[:].reshape(-1)[idx].float()
    row_len = math.prod(shape[1:])
    rows = idx // row_len
    out = torch.empty(len(idx), dtype=torch.float32)
    for r in rows.unique().tolist():
        pick = rows == r
        out[pick] = sl[r : r + 1].reshape(-1)[idx[pick] % row_len].float()
    return out


def _dequantise(values: torch.Tensor, idx: torch.Tensor, shape, scale: torch.Tensor | None) -> torch.Tensor:
    if scale is None:
        return values
    scale = scale.detach().float().cpu().reshape(-1)
    if scale.numel() == 1:
        return values * scale
    return values * scale[idx // math.prod(shape[1:])]  # one scale per output row
