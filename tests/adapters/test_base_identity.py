"""Base-model identity: the same for a model in memory and on disk, read from a few sampled rows."""

from __future__ import annotations

import torch
from adapter_helpers import base_model, trained

from hhtune.adapters import base_identity
from hhtune.adapters.base_identity import base_model_id
from hhtune.export import export_adapter
from hhtune.model import load_checkpoint, save_checkpoint


def test_base_model_id_is_the_same_in_memory_and_on_disk(tmp_path):
    model = base_model()
    fp = base_model_id(model)
    saved = save_checkpoint(model, tmp_path / "ckpt", max_shard_size=40_000)
    assert base_model_id(saved) == fp
    assert base_model_id(trained()) == fp  # the base under a PEFT wrapper
    assert base_model_id(load_checkpoint(saved, dtype=torch.float32)) == fp  # another storage dtype
    assert base_model_id(base_model(seed=1)) != fp  # same shapes, other weights (an SR or distilled model)
    fp8 = export_adapter(trained(), "merged_fp8", tmp_path / "fp8.safetensors", base=saved, strength=0.0)
    assert base_model_id(fp8) != fp  # FP8 rounding changes the values
    stored_fp8 = base_model_id(load_checkpoint(fp8, fp8_storage=True))
    assert stored_fp8 == base_model_id(fp8) == base_model_id(load_checkpoint(fp8))


def test_base_model_id_reads_only_sampled_rows(tmp_path, monkeypatch):
    from safetensors import safe_open as real_open

    saved = save_checkpoint(base_model(), tmp_path / "ckpt")
    full_reads = []

    class Spy:
        def __init__(self, *a, **k):
            self._f = real_open(*a, **k)

        def __enter__(self):
            self._f.__enter__()
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def get_tensor(self, key):
            full_reads.append(key)
            return self._f.get_tensor(key)

    monkeypatch.setattr(base_identity, "safe_open", Spy)
    assert base_model_id(saved) == base_model_id(base_model())
    assert full_reads == []  # weights are read through row slices only
