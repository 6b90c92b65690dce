"""Checkpoint I/O in the official layout (sharded safetensors + ``model.safetensors.index.json``).

* :func:`load_checkpoint` validates keys and shapes from the file headers before any
  tensor is read, builds the model on the meta device and streams shard by shard into
  it, so the 15B model is never held twice in host memory.
* Community FP8 checkpoints (``float8_e4m3fn`` weights with ``<key>.__fp8_scale``) are
  dequantised to bf16 on load, or kept in FP8 with on-the-fly dequantisation.
* :func:`save_checkpoint` writes the same layout; every file is written atomically.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from torch import nn

from ..io import atomic_save_file, atomic_write_text
from .config import ModelConfig
from .placement import host_resident_keys, host_tensor
from .precision import FP8_DTYPE
from .transformer import HappyHorseTransformer

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
CONFIG_NAME = "hhtune_config.json"
FP8_SCALE_SUFFIX = ".__fp8_scale"
_LORA_MARKERS = ("lora_A", "lora_B", "lora_down", "lora_up", "lora_magnitude_vector", ".alpha")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the requested model, with the reason."""


# --------------------------------------------------------------------------- reading


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of a checkpoint: a folder (index + shards, or ``model.safetensors``) or one file."""
    p = Path(path)
    if p.is_file():
        if p.suffix != ".safetensors":
            raise CheckpointError(f"{p} is not a .safetensors file")
        return [p]
    if not p.is_dir():
        raise CheckpointError(f"checkpoint not found: {p} (expected a folder with {INDEX_NAME} or {SINGLE_NAME})")
    index = p / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e})") from e
        files = [p / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} names shards that are not in {p}: {missing}")
        return files
    if (p / SINGLE_NAME).is_file():
        return [p / SINGLE_NAME]
    found = sorted(f.name for f in p.glob("*.safetensors"))
    hint = f"; it holds {found[:5]}" if found else ""
    raise CheckpointError(f"{p} has neither {INDEX_NAME} nor {SINGLE_NAME}{hint}")


def read_shapes(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, dtype) of every tensor in a checkpoint, from the headers only."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in checkpoint_files(path):
        try:
            with safe_open(f, framework="pt") as sf:
                for k in sf.keys():
                    sl = sf.get_slice(k)
                    out[k] = (tuple(sl.get_shape()), sl.get_dtype())
        except Exception as e:  # safetensors raises several types for truncated or foreign files
            raise CheckpointError(f"{f} is not a readable safetensors file ({e})") from e
    return out


def load_state_dict_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint (folder or file) in one dict. Use for small models and adapters."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in iter_tensors(path, device=device):
        out[key] = tensor
    return out


def iter_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, tensor)`` shard by shard, so at most one tensor is materialised at a time."""
    for f in checkpoint_files(path):
        with safe_open(f, framework="pt", device=str(device)) as sf:
            for k in sf.keys():
                yield k, sf.get_tensor(k)


# --------------------------------------------------------------------------- validation


def infer_config(shapes: dict[str, tuple[tuple[int, ...], str]]) -> ModelConfig:
    """Recover the architecture of an official-layout checkpoint from its tensor shapes."""
    _reject_adapter(shapes)
    try:
        hidden, video_in = shapes["adapter.video_embedder.weight"][0]
        text_in = shapes["adapter.text_embedder.weight"][0][1]
        audio_in = shapes["adapter.audio_embedder.weight"][0][1]
        nb = shapes["adapter.rope.bands"][0][0]
    except KeyError as e:
        raise CheckpointError(f"not a HappyHorse checkpoint: missing {e.args[0]!r}") from e
    layers = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"block\.layers\.(\d+)\.", k))})
    head_dim = nb * 8
    mm, gelu, post = [], [], []
    qkv_out = None
    for i in layers:
        pre = f"block.layers.{i}."
        lacking = [k for k in ("attention.pre_norm.weight", "attention.linear_qkv.weight", "mlp.up_gate_proj.weight",
                               "mlp.down_proj.weight") if pre + k not in shapes]  # fmt: skip
        if lacking:
            raise CheckpointError(f"incomplete HappyHorse checkpoint: missing {_few([pre + k for k in lacking])}")
        experts = shapes[pre + "attention.pre_norm.weight"][0][0] // hidden
        if experts == 3:
            mm.append(i)
        up = shapes[pre + "mlp.up_gate_proj.weight"][0][0] // experts
        down_in = shapes[pre + "mlp.down_proj.weight"][0][1]
        if up == down_in:
            gelu.append(i)
        if pre + "attn_post_norm.weight" in shapes:
            post.append(i)
        qkv_out = shapes[pre + "attention.linear_qkv.weight"][0][0] // experts
    heads_q = hidden // head_dim
    rest = (qkv_out or 0) - heads_q * head_dim  # 2 * kv * head_dim, plus one gate per query head
    gating = rest % (2 * head_dim) != 0
    kv = (rest - (heads_q if gating else 0)) // (2 * head_dim)
    return ModelConfig(
        num_layers=len(layers), hidden_size=hidden, head_dim=head_dim, num_query_groups=kv,
        video_in_channels=video_in, audio_in_channels=audio_in, text_in_channels=text_in,
        mm_layers=mm, gelu7_layers=gelu, enable_attn_gating=gating, post_norm_layers=post,
    )  # fmt: skip


def _reject_adapter(shapes: dict) -> None:
    lora = [k for k in shapes if any(m in k for m in _LORA_MARKERS)]
    if lora:
        raise CheckpointError(
            f"this is a LoRA adapter ({len(lora)} adapter tensors, e.g. {lora[0]!r}), not a base checkpoint: "
            "load the base model first and apply the adapter with hhtune.adapters.load(path, model)"
        )


def validate_shapes(
    shapes: dict[str, tuple[tuple[int, ...], str]], model: nn.Module, source: str = "checkpoint"
) -> None:
    """Fail with a message naming every missing, unexpected or mis-shaped key, and the likely cause."""
    _reject_adapter(shapes)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: s for k, (s, _) in shapes.items() if not k.endswith(FP8_SCALE_SUFFIX)}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if not (missing or unexpected or wrong):
        return
    lines = [f"{source} does not match the model:"]
    if missing:
        lines.append(f"  missing {len(missing)} keys: {_few(missing)}")
    if unexpected:
        lines.append(f"  unexpected {len(unexpected)} keys: {_few(unexpected)}")
    if wrong:
        lines.append(
            f"  {len(wrong)} keys with wrong shapes: "
            + _few([f"{k} (checkpoint {list(got[k])}, model {list(expected[k])})" for k in wrong])
        )
    lines.append("  likely cause: " + _likely_cause(shapes, model))
    raise CheckpointError("\n".join(lines))


def _likely_cause(shapes: dict, model: nn.Module) -> str:
    try:
        found = infer_config(shapes)
    except CheckpointError as e:
        return f"it is not a HappyHorse checkpoint ({e})"
    cfg: ModelConfig = model.config  # type: ignore[assignment]
    for name in ModelConfig.preset_names():
        if ModelConfig.preset(name) == found:
            return (f"the checkpoint is the {name!r} preset, but the model was built for another config; "
                    f"pass config=None or ModelConfig.preset({name!r})")
    if found.num_layers != cfg.num_layers or found.hidden_size != cfg.hidden_size:
        return (
            f"the checkpoint has {found.num_layers} layers of width {found.hidden_size}, the model "
            f"{cfg.num_layers} of width {cfg.hidden_size}: wrong preset; pass config=None to infer it"
        )
    return (
        "the architectures differ (a super-resolution or other variant saved with different layer settings?); "
        f"the checkpoint looks like {found.model_dump()}"
    )


def _few(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


# --------------------------------------------------------------------------- loading


def load_checkpoint(
    path: str | os.PathLike,
    config: ModelConfig | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    fp8_storage: bool = False,
    swap_blocks: int = 0,
) -> HappyHorseTransformer:
    """Load an official-layout checkpoint into a new :class:`HappyHorseTransformer`.

    Args:
        path: folder with ``model.safetensors.index.json`` and shards, or ``model.safetensors``, or one file.
        config: the architecture; ``None`` reads ``hhtune_config.json`` beside the weights or infers it from shapes.
        dtype: storage dtype of the block linears (default bf16, the official policy); fp32 parts stay fp32.
        device: where to put the weights (default CPU).
        fp8_storage: keep FP8 weights of an FP8 checkpoint in FP8 (dequantised on the fly) instead of bf16.
        swap_blocks: the frozen block-linear weights of the last ``swap_blocks`` layers go to host
            memory (pinned when ``device`` is CUDA) instead of ``device``, for block swap.
    """
    shapes = read_shapes(path)
    if config is None:
        config = saved_config(path) or infer_config(shapes)
    with torch.device("meta"):
        model = HappyHorseTransformer(config)
    validate_shapes(shapes, model, source=str(path))
    device = torch.device(device or "cpu")
    host = host_resident_keys(model, swap_blocks)
    block_dtype = dtype or torch.bfloat16
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    pending_scales: dict[str, torch.Tensor] = {}
    fp8_weights: dict[str, torch.Tensor] = {}
    for key, tensor in iter_tensors(path):
        if key.endswith(FP8_SCALE_SUFFIX):
            pending_scales[key[: -len(FP8_SCALE_SUFFIX)]] = tensor.float()
            continue
        if tensor.dtype == FP8_DTYPE:
            fp8_weights[key] = tensor
            continue
        _assign(modules, params, buffers, key, tensor, block_dtype, device, key in host)
    for key, tensor in fp8_weights.items():
        if key not in pending_scales:
            raise CheckpointError(f"FP8 tensor {key!r} has no {key + FP8_SCALE_SUFFIX!r} scale in {path}")
        scale = pending_scales.pop(key)
        scale = scale.reshape(-1, *([1] * (tensor.dim() - 1))) if scale.numel() > 1 else scale.reshape(())
        if fp8_storage:
            owner = modules[key.rsplit(".", 1)[0]]
            weight = host_tensor(tensor, device) if key in host else tensor.to(device)
            owner.weight = nn.Parameter(weight, requires_grad=False)
            owner.fp8_scale = scale.to(device)
        else:
            _assign(modules, params, buffers, key, (tensor.float() * scale), block_dtype, device, key in host)
    if pending_scales:
        raise CheckpointError(f"FP8 scales without an FP8 weight in {path}: {_few(sorted(pending_scales))}")
    # the device may be meta (a dry run), so what was loaded is checked by name
    loaded = {k for k in shapes if not k.endswith(FP8_SCALE_SUFFIX)}
    loaded |= {k.rsplit(".", 1)[0] + ".fp8_scale" for k in fp8_weights} if fp8_storage else set()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta and n not in loaded]
    if left:
        raise CheckpointError(f"{path} left {len(left)} tensors unloaded: {_few(left)}")
    return model


def _assign(modules, params, buffers, key, tensor, block_dtype, device, on_host: bool) -> None:
    owner_name, attr = key.rsplit(".", 1)
    owner = modules[owner_name]
    if key in params:
        target = params[key].dtype
        if target == torch.bfloat16:  # block linears: the storage dtype is selectable
            target = block_dtype
        value = host_tensor(tensor.to(target), device) if on_host else tensor.to(device=device, dtype=target)
        owner._parameters[attr] = nn.Parameter(value, requires_grad=True)
    else:
        owner._buffers[attr] = tensor.to(device=device, dtype=buffers[key].dtype)


def saved_config(path: str | os.PathLike) -> ModelConfig | None:
    """The ``hhtune_config.json`` written beside the weights by :func:`save_checkpoint`, or ``None``."""
    p = Path(path)
    cfg = (p if p.is_dir() else p.parent) / CONFIG_NAME
    return ModelConfig(**json.loads(cfg.read_text())) if cfg.is_file() else None


# --------------------------------------------------------------------------- saving


def save_checkpoint(
    model: HappyHorseTransformer,
    path: str | os.PathLike,
    max_shard_size: int | str = "5GB",
    metadata: dict[str, str] | None = None,
) -> Path:
    """Save ``model`` in the official layout: shards, ``model.safetensors.index.json`` and ``hhtune_config.json``.

    FP8-stored weights are written as ``float8_e4m3fn`` with ``<key>.__fp8_scale``. Each file
    is written to a temporary name and renamed, and the index last, so a crash never
    leaves a loadable half-written checkpoint. Shards of an earlier save are removed.
    """
    state = _official_state_dict(model)
    return write_sharded(state.items(), path, max_shard_size=max_shard_size, metadata=metadata,
                         config=model.config)  # fmt: skip


def _official_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        scale = getattr(module, "fp8_scale", None)
        if scale is not None:
            shape = (-1,) if scale.numel() > 1 else ()
            state[f"{name}.weight{FP8_SCALE_SUFFIX}"] = scale.float().reshape(shape)
    return state


def write_sharded(
    tensors: Iterable[tuple[str, torch.Tensor]],
    path: str | os.PathLike,
    max_shard_size: int | str = "5GB",
    metadata: dict[str, str] | None = None,
    config: ModelConfig | None = None,
) -> Path:
    """Write ``(key, tensor)`` pairs as official-layout shards plus index, atomically file by file."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in tensors}
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    meta = {"format": "pt", **(metadata or {})}
    for filename, keys in split.filename_to_tensors.items():
        atomic_save_file({k: state[k] for k in keys}, out / filename, meta)
    if config is not None:
        atomic_write_text(out / CONFIG_NAME, config.model_dump_json(indent=2))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total, **(metadata or {})},
             "weight_map": dict(sorted(split.tensor_to_filename.items()))}
    if split.is_sharded:
        atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=2))
        (out / SINGLE_NAME).unlink(missing_ok=True)
    else:
        (out / INDEX_NAME).unlink(missing_ok=True)
    keep = set(split.filename_to_tensors)
    for stale in out.glob("model*.safetensors"):
        if stale.name not in keep:
            stale.unlink()
    return out
