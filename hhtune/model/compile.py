"""Regional compilation: each transformer layer is compiled on its own (``model.compile``).

Only a layer's ``forward`` is compiled, not its call: the hooks around it (block swap's
fetch and release, FSDP's unshard) stay eager, and the layer keeps its module, parameter
names and PEFT wrappers. Layers of one structure share compiled code. Sequence lengths
vary from step to step (buckets, text length, dropped captions): the first change marks
them dynamic, so a run compiles a few graphs per layer structure, not one per step.
"""

from __future__ import annotations

import torch
from torch import nn

from .transformer import TransformerLayer

# Graphs one compiled forward may hold (layer structures x static/dynamic shapes x masked or not);
# all layers share TransformerLayer.forward's code, and torch's default of 8 is too few for them.
RECOMPILE_LIMIT = 64


def compile_layers(model: nn.Module) -> int:
    """Compile the ``forward`` of every transformer layer of ``model`` (PEFT-wrapped or not); return how many.

    Call it on the finished model, after LoRA and block swap (before or after FSDP sharding: its
    hooks stay outside the compiled code). Raises the recompile limit of the shared forward.
    """
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    layers = [m for m in model.modules() if isinstance(m, TransformerLayer)]
    for layer in layers:
        layer.forward = torch.compile(layer.forward)
    return len(layers)
