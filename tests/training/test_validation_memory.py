"""Validation that fits: prompts are encoded once, before the transformer exists, and the text encoder is gone after."""

from __future__ import annotations

import gc
import importlib
import weakref

import pytest
import torch

from hhtune.encoders import build_tiny_encoders
from hhtune.recipe import validate_recipe
from hhtune.training import Callback, TrainingDataset, train
from hhtune.training.outputs import encode_validation_prompts
from hhtune.training.synthetic import write_synthetic_dataset

PROMPTS = ["synthetic clip 1", "a red ball bounces", "a host waves"]


def _recipe(data, enc, out) -> dict:
    return {
        "model": {"preset": "tiny", "gradient_checkpointing": False, "block_dtype": "fp32"},
        "lora": {"rank": 2},
        "data": {"dataset": str(data)},
        "train": {"max_steps": 3, "output_dir": str(out), "mixed_precision": "no"},
        "checkpointing": {"every_steps": 3},
        "logging": {"wandb_mode": "disabled"},
        "export": {"formats": []},
        "validation": {"prompts": PROMPTS, "every_steps": 2, "at_end": True, "seconds": 0.5, "base_resolution": 32,
                       "encoders": str(enc)},
    }


@pytest.mark.slow  # training with validation
def test_text_encoder_loads_once_for_all_prompts_and_is_never_resident_while_training(tmp_path, monkeypatch):
    from transformers import T5GemmaEncoderModel

    generate = importlib.import_module("hhtune.sampling.generate")  # the package's `generate` is the function

    build_tiny_encoders(tmp_path / "enc")
    data = write_synthetic_dataset(tmp_path / "ds", clips=2)
    loads: list[weakref.ref] = []
    encoded: list[list[str]] = []
    real_load = generate.load_text_encoder

    def counting_load(*args, **kwargs):
        text_encoder = real_load(*args, **kwargs)
        loads.append(weakref.ref(text_encoder.model))
        real_encode = text_encoder.encode
        text_encoder.encode = lambda prompts: (encoded.append(list(prompts)), real_encode(prompts))[1]
        return text_encoder

    monkeypatch.setattr(generate, "load_text_encoder", counting_load)

    class Resident(Callback):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def on_step_end(self, step: int) -> None:
            gc.collect()
            assert loads and all(ref() is None for ref in loads), f"a text encoder is alive at step {step}"
            # type(), not isinstance(): a dead weakref.proxy among gc's objects raises on isinstance
            alive = [o for o in gc.get_objects() if issubclass(type(o), T5GemmaEncoderModel)]
            assert not alive, f"{len(alive)} T5Gemma encoder(s) resident beside the transformer at step {step}"
            self.steps.append(step)

    resident = Resident()
    run = train(validate_recipe(_recipe(data, tmp_path / "enc", tmp_path / "run")), log=lambda *_: None,
                callbacks=[resident])  # fmt: skip
    assert resident.steps == [1, 2, 3]
    # one load for 3 prompts and 2 validations (steps 2 and 3); the clip caption came from the dataset
    assert len(loads) == 1 and encoded == [PROMPTS[1:]]
    for step in (2, 3):
        assert sorted(p.name for p in (run / "samples" / f"step-{step:08d}").glob("*.mp4")) == [
            "prompt00.mp4", "prompt01.mp4", "prompt02.mp4"]  # fmt: skip


def test_a_prompt_equal_to_a_caption_reuses_the_clip_features(tmp_path):
    build_tiny_encoders(tmp_path / "enc")
    data = TrainingDataset(write_synthetic_dataset(tmp_path / "ds", clips=2))
    recipe = validate_recipe(_recipe(data.path, tmp_path / "enc", tmp_path / "run"))
    feats = encode_validation_prompts(recipe, data, torch.device("cpu"))
    stored = torch.as_tensor(data.ds[1]["text_embeds"])
    assert torch.equal(feats[0][0][0], stored) and feats[0][1] == stored.shape[0]
    assert [f[0].shape[-1] for f in feats] == [32, 32, 32] and all(f[0].shape[1] == f[1] for f in feats)
    assert not torch.equal(feats[1][0][0, :2], feats[2][0][0, :2])  # really encoded, and differently
