"""The model validation samples are drawn from: the trained one, or the adapter on a distilled checkpoint."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict

from ..adapters.inject import add_lora
from ..model import load_checkpoint
from ..recipe import Recipe


@contextlib.contextmanager
def validation_model(recipe: Recipe, peft_model: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """Yield a model in eval mode carrying the current adapter.

    When the recipe names ``model.eval_checkpoint`` (teams train on the base model and
    ship on the distilled one), that checkpoint is loaded, the current adapter weights
    are put on it, and it is freed afterwards; otherwise the trained model itself is
    used and put back in training mode.
    """
    if recipe.model.eval_checkpoint is None:
        was_training = peft_model.training
        peft_model.eval()
        try:
            yield peft_model
        finally:
            peft_model.train(was_training)
        return
    base = load_checkpoint(recipe.model.eval_checkpoint, device=device)
    evaluated = add_lora(base, recipe.lora)
    set_peft_model_state_dict(evaluated, get_peft_model_state_dict(peft_model))
    evaluated.eval()
    try:
        yield evaluated
    finally:
        del evaluated, base
        if device.type == "cuda":
            torch.cuda.empty_cache()
