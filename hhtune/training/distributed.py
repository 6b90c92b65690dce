"""FSDP2 sharding of the frozen base, and full (unsharded) adapter/optimizer state from sharded runs.

``accelerate launch --config_file accelerate_configs/fsdp2.yaml`` (or ``cpu_fsdp2.yaml``) exports
``ACCELERATE_USE_FSDP=true`` and the ``FSDP_*`` settings to every process. The trainer then
shards the PEFT model itself with torch's ``fully_shard`` (one unit per ``TransformerLayer``,
then the root) instead of handing the model to ``Accelerator.prepare``: Accelerate's FSDP
path needs CUDA, while ``fully_shard`` also runs on CPU processes over gloo, which is how
the sharded path is tested. LoRA weights live inside the sharded layers, so they are
sharded too; every state that leaves the run (checkpoint, export, validation) is gathered
in full first.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

_TRUE = ("1", "true", "yes")


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (version 2; version 1 is refused)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() not in _TRUE:
        return False
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise ValueError(f"the accelerate config asks for FSDP version {version}; hhtune supports fsdp_version: 2 "
                         "(see accelerate_configs/fsdp2.yaml)")  # fmt: skip
    if not hasattr(torch.nn.utils, "clip_grads_with_norm_"):
        raise ValueError(f"FSDP2 training needs torch>=2.6 (public fully_shard and sharded gradient clipping); "
                         f"this is torch {torch.__version__}")  # fmt: skip
    return True


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``fully_shard`` every ``FSDP_TRANSFORMER_CLS_TO_WRAP`` layer (default ``TransformerLayer``), then the root.

    Call on every process, after the adapter is added and loaded and before the optimizer is built
    (sharding replaces the parameters). Parameters move to ``device``.
    """
    names = {n.strip() for n in os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "TransformerLayer").split(",")
             if n.strip()}
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() in _TRUE
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    units = [m for m in model.modules() if type(m).__name__ in names]
    if not units:
        raise ValueError(f"fsdp_transformer_layer_cls_to_wrap names {sorted(names)}, but the model has no such "
                         "modules; use TransformerLayer")  # fmt: skip
    for layer in units:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    return model


def full_trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter, unsharded, on the CPU, by its name in ``model``.

    A collective under FSDP (every process must call it). Only the adapter is gathered,
    never the frozen base, which ``get_model_state_dict(full_state_dict=True)`` would also
    gather: 30 GB per checkpoint for the 15B model.
    """
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            t = p.detach()
            out[name] = (t.full_tensor() if isinstance(t, DTensor) else t).cpu().clone()
    return out


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, unsharded, on the CPU (a collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict  # noqa: PLC0415 -- torch.distributed.checkpoint loads in ~1 s, only optimizer state under FSDP needs it

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Inverse of :func:`full_optimizer_state`: each process keeps its shard of ``state``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict  # noqa: PLC0415 -- torch.distributed.checkpoint loads in ~1 s, only optimizer state under FSDP needs it

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))
