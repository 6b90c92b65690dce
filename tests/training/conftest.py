"""Fixtures for training tests: synthetic latent datasets in the data_prep format."""

from __future__ import annotations

import pytest

from hhtune.training.synthetic import write_synthetic_dataset


@pytest.fixture()
def synthetic_dataset(tmp_path):
    """Four clips, two buckets, with reference latents."""
    return write_synthetic_dataset(tmp_path / "dataset", clips=4, buckets=2, with_reference=True)
