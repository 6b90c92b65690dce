"""Shared test fixtures: the official parity fixture and a tiny seeded model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"

# Nothing in the test suite may reach a hub or a tracking server.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def official_tiny_file() -> Path:
    """``official_forward_tiny.safetensors``: the official forward of the tiny config, with its ``arch`` metadata."""
    return FIXTURES / "official_forward_tiny.safetensors"


@pytest.fixture(scope="session")
def official_tiny(official_tiny_file) -> dict[str, torch.Tensor]:
    """Tensors of ``official_forward_tiny.safetensors`` (weights.*, packed.*, inputs.*, outputs.*)."""
    from safetensors.torch import load_file

    return load_file(official_tiny_file)


@pytest.fixture(scope="session")
def official_tiny_weights(official_tiny) -> dict[str, torch.Tensor]:
    """The official state dict of the tiny fixture model."""
    return {k[len("weights.") :]: v for k, v in official_tiny.items() if k.startswith("weights.")}


@pytest.fixture()
def tiny_model(official_tiny_weights):
    """The tiny preset loaded with the official fixture weights (eval mode)."""
    from hhtune.model import HappyHorseTransformer, ModelConfig

    model = HappyHorseTransformer(ModelConfig.preset("tiny"))
    model.load_state_dict(official_tiny_weights)
    return model.eval()
