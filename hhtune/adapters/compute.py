"""The dtypes of LoRA: fp32 weights (the optimizer's master copy), matmuls in the compute dtype.

* :func:`fp32_adapters` makes sure adapters on an FP8-stored base are created in fp32.
  PEFT creates a new adapter in its base weight's dtype (so in e4m3 on an FP8 base) and,
  depending on its version, upcasts it afterwards or not; either way the initial values
  went through e4m3. They are made fp32 and initialised again.
* :func:`set_lora_compute_dtype` runs the adapters' matmuls in bf16 (on CUDA the model's
  compute dtype) while their weights stay fp32: each LoRA linear runs under
  ``torch.autocast``, which casts the input and the weight for the matmul; the gradient
  flows back through the cast into the fp32 weight. The state dict, the parameters the
  optimizer holds and PEFT's save/load are unchanged.
"""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..model.precision import FP8_DTYPE


def fp32_adapters(model: nn.Module, adapter_name: str, init_lora_weights: bool | str) -> int:
    """Recreate ``adapter_name``'s weights in fp32 where the base layer is FP8; returns how many layers."""
    n = 0
    for layer in model.modules():
        if not isinstance(layer, LoraLayer) or adapter_name not in layer.lora_A:
            continue
        if getattr(layer.get_base_layer(), "weight", None) is None or layer.get_base_layer().weight.dtype != FP8_DTYPE:
            continue
        for name in layer.adapter_layer_names:
            group = getattr(layer, name)
            if adapter_name in group and isinstance(group[adapter_name], nn.Module):
                group[adapter_name].to(torch.float32)
        layer.reset_lora_parameters(adapter_name, init_lora_weights)
        n += 1
    return n


class LoraCompute:
    """Hooks that run every LoRA linear of a model under autocast to ``dtype``; :meth:`remove` undoes them."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self._handles: list[RemovableHandle] = []
        self._layers: list[LoraLayer] = []
        self._open: dict[nn.Module, torch.autocast] = {}
        for layer in model.modules():
            if not isinstance(layer, LoraLayer):
                continue
            layer.cast_input_dtype_enabled = False  # no fp32 copy of the input; autocast casts it for the matmul
            self._layers.append(layer)
            for name in layer.adapter_layer_names:
                for linear in getattr(layer, name).values():
                    if isinstance(linear, nn.Linear):
                        self._handles.append(linear.register_forward_pre_hook(self._enter))
                        self._handles.append(linear.register_forward_hook(self._exit, always_call=True))

    def _enter(self, module: nn.Module, args: tuple) -> None:
        ctx = torch.autocast(device_type=args[0].device.type, dtype=self.dtype)
        ctx.__enter__()
        self._open[module] = ctx

    def _exit(self, module: nn.Module, _args: tuple, _output: object) -> None:
        ctx = self._open.pop(module, None)
        if ctx is not None:
            ctx.__exit__(None, None, None)

    def remove(self) -> None:
        """LoRA computes in its weights' dtype again."""
        for h in self._handles:
            h.remove()
        for layer in self._layers:
            layer.cast_input_dtype_enabled = True
        self._handles, self._layers = [], []


def set_lora_compute_dtype(model: nn.Module, dtype: torch.dtype) -> LoraCompute | None:
    """Run ``model``'s LoRA matmuls in ``dtype`` (weights stay fp32); ``None`` (nothing to do) for fp32."""
    if dtype == torch.float32:
        return None
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"LoRA compute dtype must be fp32, bf16 or fp16, got {dtype}")
    return LoraCompute(model, dtype)
