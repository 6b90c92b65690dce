"""Where the transformer's weights live: on the device, or (block swap) in host memory.

With ``blocks`` swapped layers, the frozen :class:`SwappableLinear` weights of the last
``blocks`` layers stay in host memory (pinned when the target is CUDA) from the moment they
are loaded (:func:`host_resident_keys` for :func:`hhtune.model.load_checkpoint`,
:func:`place_model` for a model built in host memory), so the device never holds the
whole model. :func:`apply_block_swap` then hands those weights to a
:class:`~hhtune.model.offload.BlockSwap`, after LoRA is added.
"""

from __future__ import annotations

import torch
from torch import nn

from .linears import SwappableLinear
from .offload import BlockSwap
from .transformer import HappyHorseTransformer

#: DoRA reads the base weight outside the linear, where block swap has released it.
SWAP_WITH_DORA = ("model.blocks_to_swap does not work with lora.use_dora (DoRA reads the swapped base weight); "
                  "set one off")


def swapped_layers(num_layers: int, blocks: int) -> range:
    """Indices of the layers block swap keeps on the host: the last ``blocks``."""
    if not 0 <= blocks <= num_layers:
        raise ValueError(f"model.blocks_to_swap = {blocks}: must be in 0..{num_layers} "
                         f"(the model has {num_layers} layers)")
    return range(num_layers - blocks, num_layers)


def host_resident_keys(model: HappyHorseTransformer, blocks: int) -> set[str]:
    """State-dict keys of the weights that stay in host memory when ``blocks`` layers are swapped."""
    out = set()
    for i in swapped_layers(len(model.block.layers), blocks):
        for name, m in model.block.layers[i].named_modules():
            if isinstance(m, SwappableLinear):
                out.add(f"block.layers.{i}.{name}.weight")
    return out


def host_tensor(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` in host memory, pinned when ``device`` is CUDA (so copies to it can be asynchronous)."""
    host = tensor.to("cpu")
    return host.pin_memory() if torch.device(device).type == "cuda" and not host.is_pinned() else host


def place_model(model: HappyHorseTransformer, device: torch.device | str, blocks: int = 0) -> HappyHorseTransformer:
    """Move ``model`` to ``device`` except the weights block swap will keep on the host (see module doc)."""
    host = host_resident_keys(model, blocks)
    modules = dict(model.named_modules())
    for key, tensor in [*model.named_parameters(), *model.named_buffers()]:
        owner_name, attr = key.rsplit(".", 1)
        target = host_tensor(tensor.data, device) if key in host else tensor.data.to(device)
        if attr in modules[owner_name]._parameters:  # before LoRA and the optimizer: new Parameter objects are fine
            modules[owner_name]._parameters[attr] = nn.Parameter(target, requires_grad=tensor.requires_grad)
        else:
            modules[owner_name]._buffers[attr] = target
    return model


def apply_block_swap(model: nn.Module, blocks: int, device: torch.device | str) -> BlockSwap | None:
    """Swap the frozen weights of the last ``blocks`` transformer layers of ``model`` (PEFT-wrapped or not).

    Returns the :class:`BlockSwap` (``None`` for 0). DoRA reads the base weight outside
    the linear and cannot be swapped.
    """
    if blocks == 0:
        return None
    base = next((m for m in model.modules() if isinstance(m, HappyHorseTransformer)), None)
    if base is None:
        raise TypeError("block swap needs a HappyHorseTransformer (optionally wrapped by PEFT)")
    layers = list(base.block.layers)
    swapped = swapped_layers(len(layers), blocks)
    if any("lora_magnitude_vector" in n for n, _ in model.named_parameters()):
        raise ValueError(SWAP_WITH_DORA)
    return BlockSwap([layers[i] for i in swapped], device)
