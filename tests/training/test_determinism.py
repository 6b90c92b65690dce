"""train.deterministic switches torch's deterministic kernels on, and nothing when off."""

from __future__ import annotations

import os

import pytest
import torch

from hhtune.recipe import TrainSection
from hhtune.training.determinism import configure_determinism


@pytest.fixture()
def restore_global_settings(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]


def test_deterministic_sets_torch_cublas_and_cudnn(restore_global_settings):
    assert TrainSection().deterministic is False
    torch.backends.cudnn.benchmark = True  # a setting a user may have made
    configure_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert torch.backends.cudnn.benchmark
    configure_determinism(True)
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
