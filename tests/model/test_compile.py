"""Regional compilation (``model.compile``): no graph breaks, a bounded number of graphs, eager's numbers."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from hhtune.adapters.inject import add_lora
from hhtune.adapters.settings import LoraSettings
from hhtune.model import HappyHorseTransformer, ModelConfig
from hhtune.model.attention import UNMASKED, TokenGroups, sdpa_plan
from hhtune.model.compile import compile_layers
from hhtune.model.placement import apply_block_swap
from hhtune.model.transformer import Segments

# One expert (sandwich, GELU7) layer and one shared (SwiGLU7) layer: the two structures of the real model.
CONFIG = ModelConfig(num_layers=2, hidden_size=32, head_dim=16, num_query_groups=1, video_in_channels=192,
                     audio_in_channels=64, text_in_channels=8, mm_layers=[0], gelu7_layers=[0])  # fmt: skip


def _lora_model(swap: bool):
    """LoRA on every layer (experts included), checkpointing, and the last layer block-swapped."""
    torch.manual_seed(0)
    model = HappyHorseTransformer(CONFIG)
    model.enable_gradient_checkpointing(True)
    peft_model = add_lora(model, LoraSettings(rank=4, layers="all"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero; make the adapter do something
                p.normal_(std=0.1, generator=torch.Generator().manual_seed(len(name)))
    if swap:
        apply_block_swap(peft_model, 1, "cpu")
    return model, peft_model


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _explain_forward(layer, *args):
    """``torch._dynamo.explain`` of ``layer.forward`` (what compile_layers compiles) with the layer's hooks run around
    it eagerly, as a module call runs them: block swap fetches a swapped layer's weights in its pre-hook."""
    for hook in layer._forward_pre_hooks.values():
        hook(layer, args)
    try:
        return torch._dynamo.explain(layer.forward)(*args)
    finally:
        for hook in layer._forward_hooks.values():
            hook(layer, args, None)


@pytest.mark.slow
def test_every_layer_structure_traces_without_graph_breaks():
    model, _ = _lora_model(swap=True)
    seg, length = Segments(8, 5, 3), 16
    h = torch.randn(1, length, CONFIG.hidden_size, requires_grad=True)
    cos, sin = model.adapter.rope(torch.ones(1, length, 9))
    valid = torch.ones(1, length, dtype=torch.bool)
    valid[0, -1] = False
    for layer in model.block.layers:
        for plan in (UNMASKED, sdpa_plan(TokenGroups.padded_rows(valid))):
            explained = _explain_forward(layer, h, cos, sin, seg, plan)
            assert explained.graph_break_count == 0, explained.break_reasons
            assert explained.graph_count == 1


# (T, H, W) bucket, audio tokens, text tokens; 0 text tokens = a dropped caption
STEPS = [((2, 4, 4), 5, 6), ((2, 4, 4), 5, 3), ((2, 4, 6), 7, 0), ((3, 4, 4), 9, 5), ((2, 4, 4), 5, 9),
         ((2, 4, 6), 7, 2)]


def _train(peft_model, steps):
    """Per step: the loss and the LoRA gradients."""
    out = []
    for i, ((t, h, w), la, lt) in enumerate(steps):
        g = torch.Generator().manual_seed(i)
        video, audio, text = (torch.randn(1, 48, t, h, w, generator=g), torch.randn(1, la, 64, generator=g),
                              torch.randn(1, 12, 8, generator=g))
        peft_model.zero_grad()
        pv, pa = peft_model(video, audio, text, text_lengths=torch.tensor([lt]))
        loss = (pv - video).square().mean() + (pa - audio).square().mean()
        loss.backward()
        out.append((loss.detach(), {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None}))
    return out


@pytest.mark.slow
def test_compiled_training_equals_eager_and_stops_compiling_after_warm_up():
    eager = _train(_lora_model(swap=True)[1], STEPS)
    _model, peft_model = _lora_model(swap=True)
    assert compile_layers(peft_model) == CONFIG.num_layers
    compiled = _train(peft_model, STEPS)  # static shapes first, then dynamic ones, and a step without text
    graphs = counters["stats"]["unique_graphs"]
    assert 0 < graphs <= 4 * 2  # a few forward graphs per layer structure (2 here), not one per step
    _train(peft_model, STEPS[::-1])  # every bucket and text length again, in another order: nothing new
    assert counters["stats"]["unique_graphs"] == graphs
    assert not counters["graph_break"]
    for (loss_e, grads_e), (loss_c, grads_c) in zip(eager, compiled):
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        assert grads_c.keys() == grads_e.keys() and any("lora_A" in n for n in grads_c)
        for name in grads_e:
            torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-6, msg=name)
