"""The Turbo VAE decoder: tiled 1080p decoding, safe loading of the official files, conversion, the CLI choice."""

from __future__ import annotations

import argparse
import itertools
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hhtune.cli import EXIT_BAD_INPUT
from hhtune.convert import main as convert_main
from hhtune.encoders import EncoderError, build_tiny_turbo_vae, load_decoder, load_turbo_vae
from hhtune.encoders._tiny import TINY_TURBO_CONFIG
from hhtune.encoders.turbo_vae import TILE_LATENTS, TILE_OVERLAP, TurboVAE, TurboVAEConfig, _tile_spans

# The tiny layout without residual layers: a receptive field of about 4 latents, so tiles whose blend
# margin (a quarter of the overlap) is 4 latents must reproduce whole-frame decoding; one-frame chunks.
SHALLOW = {**{k: v for k, v in TINY_TURBO_CONFIG.items() if not k.startswith("_")},
           "decoder_layers_per_block": [0] * 5, "decoder_is_dw_conv": [False] * 5, "first_chunk_size": 1,
           "step_size": 1}  # fmt: skip


@pytest.fixture(scope="module")
def shallow() -> TurboVAE:
    torch.manual_seed(0)
    return TurboVAE(TurboVAEConfig(**SHALLOW)).eval()


@pytest.fixture()
def turbo_dir(tmp_path) -> Path:
    return build_tiny_turbo_vae(tmp_path / "turbo_vae", seed=0)


def _z(frames: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 48, frames, h, w, generator=torch.Generator().manual_seed(seed))


def test_tiles_cover_the_frame_evenly_within_the_tile_size():
    for size, tile, overlap in [(68, 72, 16), (120, 72, 16), (40, 24, 16), (10, 4, 1), (5, 8, 2), (33, 20, 4)]:
        spans = _tile_spans(size, tile, overlap)
        assert spans[0][0] == 0 and spans[-1][0] + spans[-1][1] == size
        assert all(length <= tile for _, length in spans) and len({length for _, length in spans}) == 1
        for (a, la), (b, _) in itertools.pairwise(spans):
            assert a + la - b >= overlap  # neighbours share at least the overlap
    assert _tile_spans(34, TILE_LATENTS, TILE_OVERLAP) == [(0, 34)]  # 540p (34 x 60 latents): whole frames
    assert _tile_spans(60, TILE_LATENTS, TILE_OVERLAP) == [(0, 60)]
    assert _tile_spans(120, TILE_LATENTS, TILE_OVERLAP) == [(0, 68), (52, 68)]  # 1080p: two tiles across


@torch.no_grad()
def test_tiled_decode_equals_whole_frames_where_the_margin_covers_the_receptive_field(shallow):
    z = _z(2, 4, 40)
    whole = shallow.decode(z)
    tiled = shallow.decode(z, tile=24, overlap=16)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)
    # a margin of 2 latents is inside the receptive field: the seams show, so the check above has teeth
    assert (shallow.decode(z, tile=20, overlap=8) - whole).abs().max() > 1e-3


@torch.no_grad()
def test_tiling_bounds_the_largest_activation_by_the_tile(shallow):
    """1080p-like: a wide frame decoded in two tiles never holds an activation of the whole frame."""
    largest = []

    def record(_module, _inputs, output):
        largest[-1] = max(largest[-1], output.numel())

    hooks = [m.register_forward_hook(record) for m in shallow.decoder.modules() if not list(m.children())]
    try:
        z = _z(1, 8, 40)
        largest.append(0)
        shallow.decode(z)
        largest.append(0)
        shallow.decode(z, tile=24, overlap=8)
    finally:
        for h in hooks:
            h.remove()
    whole, tiled = largest
    assert _tile_spans(40, 24, 8) == [(0, 24), (16, 24)]
    assert tiled * 40 == whole * 24  # activations scale with the tile's width, 24 of the 40 latents


@torch.no_grad()
def test_tiny_builder_loads_through_the_official_layout(turbo_dir):
    assert sorted(p.name for p in turbo_dir.iterdir()) == ["tiny_turbo_vae.ckpt", "tiny_turbo_vae.json"]
    ckpt = torch.load(turbo_dir / "tiny_turbo_vae.ckpt", weights_only=True)
    heads = {k for k in ckpt["ema_state_dict"] if not k.startswith("module.decoder.")}  # as a DDP-trained student
    assert heads == {"module.aligned_feature_projection_heads.0.0.weight"}  # dropped, as the official loader drops it
    decoder = load_decoder("turbo", turbo_dir)
    frames = decoder.decode(_z(2, 2, 3))
    assert frames.shape == (1, 3, 5, 32, 48) and frames.dtype == torch.float32
    assert frames.min() >= -1 and frames.max() <= 1 and frames.std() > 0
    bf16 = load_turbo_vae(turbo_dir / "tiny_turbo_vae.ckpt", dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}


def _pickle_with_objects(turbo_dir: Path) -> Path:
    """The tiny checkpoint re-saved as a training pickle would be: with an argparse namespace beside the weights."""
    ckpt = turbo_dir / "tiny_turbo_vae.ckpt"
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "args": argparse.Namespace(lr=1e-4)}, ckpt)
    return ckpt


def test_a_pickle_holding_more_than_tensors_is_refused_naming_the_converter(turbo_dir):
    ckpt = _pickle_with_objects(turbo_dir)
    with pytest.raises(EncoderError, match=r"holding more than tensors.*python -m hhtune\.convert turbo-vae"):
        load_turbo_vae(turbo_dir)
    assert not ckpt.with_suffix(".safetensors").exists()


@torch.no_grad()
def test_convert_writes_safetensors_that_load_instead_of_the_pickle(turbo_dir, capsys):
    expected = load_turbo_vae(turbo_dir).model.state_dict()
    ckpt = _pickle_with_objects(turbo_dir)
    assert convert_main(["turbo-vae", str(ckpt)]) == 0
    out = capsys.readouterr()
    assert "warning: unpickling" in out.err and "trust" in out.err
    converted = ckpt.with_suffix(".safetensors")
    assert f"wrote {converted}" in out.out
    assert load_file(converted).keys() == expected.keys()
    ckpt.write_bytes(b"no longer readable")  # the folder now loads from the safetensors alone
    for path in (turbo_dir, ckpt, converted):
        loaded = load_turbo_vae(path).model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in expected.items())


def test_convert_of_a_plain_tensor_pickle_needs_no_unsafe_read(turbo_dir, capsys):
    out = turbo_dir / "elsewhere" / "decoder.safetensors"
    assert convert_main(["turbo-vae", str(turbo_dir / "tiny_turbo_vae.ckpt"), "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err and out.is_file()


def test_convert_refuses_what_is_not_a_turbo_checkpoint(tmp_path, capsys):
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "step": 3}, other)
    assert convert_main(["turbo-vae", str(other)]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith("error: Turbo VAE: ") and not other.with_suffix(".safetensors").exists()
    assert convert_main(["turbo-vae", str(tmp_path / "missing.ckpt")]) == EXIT_BAD_INPUT


def _edit_config(turbo_dir: Path, **changes) -> None:
    config = turbo_dir / "tiny_turbo_vae.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **changes}))


@pytest.mark.parametrize(("change", "message"), [
    (dict(decoder_layers_per_block=[1, 1, 1, 1, 2]), r"config .*: missing 8 \(decoder\.mid_block\.resnets\.1"),
    (dict(decoder_layers_per_block=[1, 1, 1, 1, 0]), r"config .*: unexpected 8 \(decoder\.mid_block\.resnets\.0"),
    (dict(decoder_block_out_channels=[4, 8, 8, 32]), r"do not match the config .*other shapes"),
    (dict(latent_channels=16), r"latent_channels is 16; HappyHorse's latents have 48"),
    (dict(decoder_spatio_only=[False, False, False, False]), r"upsample 8x16x16 .* need 4x16x16"),
    (dict(decoder_layers_per_block=[1, 1]), r"decoder_layers_per_block has 2 entries, expected 5"),
])  # fmt: skip
def test_a_config_that_does_not_fit_the_weights_or_the_latents_is_refused(turbo_dir, change, message):
    _edit_config(turbo_dir, **change)
    with pytest.raises(EncoderError, match=message):
        load_turbo_vae(turbo_dir)


def test_unknown_config_keys_are_ignored_with_a_warning_and_training_ones_silently(turbo_dir):
    _edit_config(turbo_dir, aligned_feature_projection_mode="conv-2layer", aligned_blks_indices=[0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_turbo_vae(turbo_dir)  # the published config's distillation-head keys: no warning
    _edit_config(turbo_dir, frobnicate=3)
    with pytest.warns(UserWarning, match="ignoring keys the decoder does not take: frobnicate"):
        load_turbo_vae(turbo_dir)


def test_missing_or_ambiguous_files_are_named(turbo_dir):
    (turbo_dir / "tiny_turbo_vae.json").unlink()
    with pytest.raises(EncoderError, match=r"expected one \.json config in .*found none"):
        load_turbo_vae(turbo_dir)
    with pytest.raises(EncoderError, match=r"Turbo VAE: .*does not exist"):
        load_turbo_vae(turbo_dir / "nothing")
    with pytest.raises(EncoderError, match="unknown video decoder 'fast'; allowed: wan, turbo"):
        load_decoder("fast", turbo_dir)


def _sample_args(encoders: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "tiny", "--random-weights", "--encoders", str(encoders), "--prompt", "a red ball",
            "--seconds", "0.5", "--base-resolution", "32", "--device", "cpu", "--out", str(out), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> Path:
    from hhtune.encoders import build_tiny_encoders

    root = tmp_path_factory.mktemp("enc")
    build_tiny_encoders(root)
    return root


def test_sample_decodes_with_the_turbo_vae_when_asked(encoders, tmp_path, monkeypatch):
    import importlib

    from hhtune.encoders import turbo_load
    from hhtune.sample import main

    gen_module = importlib.import_module("hhtune.sampling.generate")  # the package's `generate` is the function
    used = []
    decode = turbo_load.TurboVideoDecoder.decode
    monkeypatch.setattr(turbo_load.TurboVideoDecoder, "decode",
                        lambda self, z: used.append(z.shape) or decode(self, z))  # fmt: skip
    monkeypatch.setattr(gen_module, "load_video_vae", lambda *_a, **_k: pytest.fail("the Wan2.2 VAE was loaded"))
    assert main(_sample_args(encoders, tmp_path / "out", "--decoder", "turbo")) == 0
    assert len(used) == 1 and (tmp_path / "out" / "sample.mp4").is_file()


def test_sample_refuses_a_pickled_turbo_vae_with_one_error_line(encoders, tmp_path, capsys):
    from hhtune.sample import main

    turbo_dir = build_tiny_turbo_vae(tmp_path / "turbo_vae")
    _pickle_with_objects(turbo_dir)
    args = _sample_args(encoders, tmp_path / "out", "--decoder", "turbo", "--turbo-vae", str(turbo_dir))
    assert main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: Turbo VAE: ") and len(err.strip().splitlines()) == 1
    assert "python -m hhtune.convert turbo-vae" in err and not (tmp_path / "out").exists()
    assert main(_sample_args(encoders, tmp_path / "out", "--turbo-vae", str(turbo_dir))) == EXIT_BAD_INPUT
    assert "pass it with --decoder turbo" in capsys.readouterr().err
