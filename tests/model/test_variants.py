"""Telling the published checkpoints apart, and loading 540p_sr/ and 1080p_sr/ in the official layout."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from hhtune.model import CheckpointError, HappyHorseTransformer, ModelConfig, save_checkpoint
from hhtune.model.variants import check_variant, detect_variant, load_variant


def _official_folder(tmp_path, name: str, weights: dict[str, torch.Tensor], linears=torch.float32):
    """An official-layout folder: ``model.safetensors`` only, block linears stored in ``linears``."""
    path = tmp_path / name
    path.mkdir(parents=True)
    stored = {k: (v.to(linears) if v.dtype == torch.bfloat16 else v) for k, v in weights.items()}
    save_file(stored, path / "model.safetensors")
    return path


@pytest.mark.parametrize(("name", "variant"), [("540p_sr", "sr_540p"), ("1080p_sr", "sr_1080p"), ("base", "base"),
                                               ("distill", "distill"), ("1080p_sr_fp8", "sr_1080p")])  # fmt: skip
def test_official_folder_names_name_the_variant(tmp_path, official_tiny_weights, name, variant):
    found = detect_variant(_official_folder(tmp_path, name, official_tiny_weights))
    assert found.variant == variant and found.sr == variant.startswith("sr_")


def test_storage_dtype_tells_base_from_the_rest(tmp_path, official_tiny_weights):
    assert detect_variant(_official_folder(tmp_path, "a", official_tiny_weights, torch.bfloat16)).variant == "base"
    unknown = detect_variant(_official_folder(tmp_path, "b", official_tiny_weights, torch.float32))
    assert (unknown.variant, unknown.sr) == (None, None)
    check_variant(tmp_path / "b", "sr_1080p")  # nothing decides: let through


def test_saved_config_names_the_variant(tmp_path):
    for variant in ("sr_540p", "sr_1080p"):
        path = save_checkpoint(HappyHorseTransformer(ModelConfig.preset("tiny", variant)), tmp_path / variant)
        assert detect_variant(path).variant == variant
    first = save_checkpoint(HappyHorseTransformer(ModelConfig.preset("tiny")), tmp_path / "mine")
    assert (detect_variant(first).variant, detect_variant(first).sr) == (None, False)


def test_the_wrong_stage_is_refused_naming_the_layout_found(tmp_path, official_tiny_weights):
    base = _official_folder(tmp_path, "base", official_tiny_weights)
    with pytest.raises(CheckpointError, match=r"has the base layout \(its folder has the official name 'base'\), "
                                              r"but the sr_1080p super-resolution checkpoint was expected"):
        load_variant(base, "sr_1080p")
    sr = _official_folder(tmp_path, "540p_sr", official_tiny_weights)
    with pytest.raises(CheckpointError, match=r"has the sr_540p layout .* but a base or distill checkpoint"):
        check_variant(sr, "distill")
    with pytest.raises(CheckpointError, match=r"has the sr_540p layout .* the sr_1080p super-resolution"):
        check_variant(sr, "sr_1080p")
    saved = save_checkpoint(HappyHorseTransformer(ModelConfig.preset("tiny", "sr_1080p")), tmp_path / "x")
    with pytest.raises(CheckpointError, match=r"hhtune_config\.json has coords_style='v1' and 7 local attention"):
        check_variant(saved, "base")


def test_official_sr_folders_load_as_their_variant_with_strict_keys(tmp_path, official_tiny_weights):
    for name, variant in (("1080p_sr", "sr_1080p"), ("540p_sr", "sr_540p")):
        model = load_variant(_official_folder(tmp_path, name, official_tiny_weights), variant)
        assert model.config == ModelConfig.preset("tiny", variant)
        assert all(torch.equal(model.state_dict()[k].float(), v.float()) for k, v in official_tiny_weights.items())
    missing = dict(official_tiny_weights)
    missing.pop("block.layers.3.attention.linear_qkv.weight")
    with pytest.raises(CheckpointError, match=r"incomplete .* missing block\.layers\.3\.attention\.linear_qkv"):
        load_variant(_official_folder(tmp_path / "m", "1080p_sr", missing), "sr_1080p")
