"""Encoders from local folders: strides, official normalisation, padding, layouts, fingerprints and errors."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import save_file

from hhtune.contract import AUDIO_SAMPLE_RATE
from hhtune.encoders import (
    WAN22_LATENTS_MEAN,
    WAN22_LATENTS_STD,
    EncoderError,
    EncoderPaths,
    build_tiny_encoders,
    encoders_fingerprint,
    load_audio_vae,
    load_text_encoder,
    load_video_vae,
)
from hhtune.encoders.audio import oobleck_config_from_official
from hhtune.encoders.video import wan22_config_from_state_dict


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> EncoderPaths:
    return build_tiny_encoders(tmp_path_factory.mktemp("enc"), seed=0)


@pytest.fixture(scope="module")
def video(tiny):
    return load_video_vae(tiny.video_vae)


@pytest.fixture(scope="module")
def audio(tiny):
    return load_audio_vae(tiny.audio_vae)


@pytest.fixture(scope="module")
def text(tiny):
    return load_text_encoder(tiny.text_encoder)


def _frames(b: int, f: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, f, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------------------------- video


def test_video_stride_is_4x16x16_and_decode_inverts_the_shape(video):
    z = video.encode(_frames(1, 9, 64, 96))
    assert z.shape == (1, 48, 3, 4, 6) and z.dtype == torch.float32
    x = video.decode(z)
    assert x.shape == (1, 3, 9, 64, 96) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert video.encode(_frames(1, 1, 32, 32)).shape == (1, 48, 1, 2, 2)  # a single image (reference frame)


def test_video_batches_give_the_same_latents_as_single_clips(video):
    frames = _frames(3, 5, 32, 32)
    video.batch_size = 2
    try:
        together = video.encode(frames)
    finally:
        video.batch_size = 1
    alone = torch.cat([video.encode(frames[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_video_constants_are_the_official_wan22_ones(video):
    # spot values of Wan2_2_VAE.mean / .std in the official inference/model/vae2_2/vae2_2_module.py
    assert len(WAN22_LATENTS_MEAN) == len(WAN22_LATENTS_STD) == 48
    assert (WAN22_LATENTS_MEAN[0], WAN22_LATENTS_MEAN[19], WAN22_LATENTS_MEAN[47]) == (-0.2289, 0.5109, -0.0667)
    assert (WAN22_LATENTS_STD[0], WAN22_LATENTS_STD[39], WAN22_LATENTS_STD[47]) == (0.4765, 1.6887, 0.7744)
    assert sum(WAN22_LATENTS_MEAN) == pytest.approx(-0.5589, abs=1e-4)
    assert sum(WAN22_LATENTS_STD) == pytest.approx(32.536, abs=1e-4)
    torch.testing.assert_close(video.latents_mean, torch.tensor(WAN22_LATENTS_MEAN))
    torch.testing.assert_close(video.latents_std, torch.tensor(WAN22_LATENTS_STD))


def test_video_normalisation_is_the_official_formula(video):
    mu = torch.randn(2, 48, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    mean = torch.tensor(WAN22_LATENTS_MEAN).view(1, 48, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(WAN22_LATENTS_STD).view(1, 48, 1, 1, 1)
    z = video.normalise(mu)
    assert torch.equal(z, (mu - mean) * inv_std)  # Wan2_2_VAE.encode: (mu - scale[0]) * scale[1], scale[1] = 1/std
    assert torch.equal(video.denormalise(z), z / inv_std + mean)  # Wan2_2_VAE.decode: z / scale[1] + scale[0]
    torch.testing.assert_close(video.denormalise(z), mu, rtol=0, atol=1e-6)
    # channel 39 has std 1.6887 and mean 0.3748: a raw latent equal to the mean maps to 0, mean + std to 1
    raw = mean.expand(1, 48, 1, 1, 1).clone()
    raw[0, 39] += WAN22_LATENTS_STD[39]
    expected = torch.zeros(1, 48, 1, 1, 1)
    expected[0, 39] = 1
    torch.testing.assert_close(video.normalise(raw), expected, rtol=0, atol=1e-6)


def test_video_encode_is_the_normalised_posterior_mean(video):
    frames = _frames(1, 5, 32, 32, seed=2)
    with torch.no_grad():
        mu = video.model.encode(frames).latent_dist.mode()
    assert torch.equal(video.encode(frames), video.normalise(mu))
    z = video.encode(frames)
    with torch.no_grad():
        expected = video.model.decode(video.denormalise(z)).sample.clamp(-1, 1)
    torch.testing.assert_close(video.decode(z), expected)


def _official_wan_key(key: str, num_res_blocks: int) -> str:
    """diffusers AutoencoderKLWan key -> the official Wan2.2 name (written independently of the loader's mapping)."""
    top = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2.", "encoder.conv_in.": "encoder.conv1.",
           "decoder.conv_in.": "decoder.conv1.", "encoder.norm_out.": "encoder.head.0.",
           "encoder.conv_out.": "encoder.head.2.", "decoder.norm_out.": "decoder.head.0.",
           "decoder.conv_out.": "decoder.head.2."}  # fmt: skip
    for new, old in top.items():
        if key.startswith(new):
            return old + key[len(new):]
    inner = {"norm1.": "residual.0.", "conv1.": "residual.2.", "norm2.": "residual.3.", "conv2.": "residual.6.",
             "conv_shortcut.": "shortcut."}  # fmt: skip

    def res(rest: str) -> str:
        return next((old + rest[len(new):] for new, old in inner.items() if rest.startswith(new)), rest)

    if m := re.match(r"(\w+)\.mid_block\.(resnets|attentions)\.(\d)\.(.*)", key):
        side, kind, i, rest = m.groups()
        idx = {("resnets", "0"): 0, ("attentions", "0"): 1, ("resnets", "1"): 2}[(kind, i)]
        return f"{side}.middle.{idx}.{res(rest) if kind == 'resnets' else rest}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.(?:resnets\.(\d+)\.(.*)|downsampler\.(.*))", key):
        lvl, j, rest, samp = m.groups()
        if samp is not None:
            return f"encoder.downsamples.{lvl}.downsamples.{num_res_blocks}.{samp}"
        return f"encoder.downsamples.{lvl}.downsamples.{j}.{res(rest)}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.(?:resnets\.(\d+)\.(.*)|upsampler\.(.*))", key):
        lvl, j, rest, samp = m.groups()
        if samp is not None:
            return f"decoder.upsamples.{lvl}.upsamples.{num_res_blocks + 1}.{samp}"
        return f"decoder.upsamples.{lvl}.upsamples.{j}.{res(rest)}"
    raise AssertionError(f"unmapped key {key}")


def test_video_loads_the_official_pth_layout(tiny, video, tmp_path):
    state = {_official_wan_key(k, video.model.config.num_res_blocks): v for k, v in video.model.state_dict().items()}
    folder = tmp_path / "Wan2.2-TI2V-5B"
    folder.mkdir()
    torch.save(state, folder / "Wan2.2_VAE.pth")
    config = wan22_config_from_state_dict(state)
    for name in ("base_dim", "decoder_base_dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample"):
        assert config[name] == video.model.config[name], name
    frames = _frames(1, 5, 32, 32, seed=3)
    for path in (folder, folder / "Wan2.2_VAE.pth"):
        official = load_video_vae(path)
        assert torch.equal(official.encode(frames), video.encode(frames))
    # a diffusers pipeline folder (vae/ inside) is found too
    shutil.copytree(tiny.video_vae, tmp_path / "pipe" / "vae")
    assert torch.equal(load_video_vae(tmp_path / "pipe").encode(frames), video.encode(frames))


# --------------------------------------------------------------------------------------------- audio


def test_audio_runs_at_25_latents_per_second(audio):
    assert audio.sample_rate == AUDIO_SAMPLE_RATE == 51200
    wave = torch.randn(2, 2, 51200, generator=torch.Generator().manual_seed(0)) * 0.1
    z = audio.encode(wave)
    assert z.shape == (2, 25, 64) and z.dtype == torch.float32  # [B, La, 64]
    assert audio.decode(z).shape == (2, 2, 51200)
    assert audio.encode(wave[..., : 2048 * 3 + 1000]).shape == (2, 3, 64)  # N // 2048, the tail is dropped


def test_audio_layout_is_time_major_and_unscaled(audio):
    wave = torch.randn(1, 2, 2048 * 4, generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.no_grad():
        mean = audio.model.encode(wave).latent_dist.mean  # [1, 64, La]
    assert torch.equal(audio.encode(wave), mean.transpose(1, 2))
    with torch.no_grad():
        expected = audio.model.decode(mean).sample
    torch.testing.assert_close(audio.decode(mean.transpose(1, 2)), expected)


def test_audio_mono_is_duplicated_and_sampling_is_seeded(audio):
    mono = torch.randn(1, 1, 2048 * 2, generator=torch.Generator().manual_seed(2)) * 0.1
    assert torch.equal(audio.encode(mono), audio.encode(mono.expand(1, 2, -1)))
    a = audio.encode(mono, generator=torch.Generator().manual_seed(5))
    b = audio.encode(mono, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, audio.encode(mono))


def _official_oobleck_key(key: str, depth: int) -> str:
    """diffusers AutoencoderOobleck key -> the stable-audio-tools name (independent of the loader's mapping)."""
    side, rest = key.split(".", 1)
    unit = {"snake1": "0", "conv1": "1", "snake2": "2", "conv2": "3"}
    if m := re.match(r"block\.(\d+)\.(\w+)\.(.*)", rest):
        i, name, tail = m.groups()
        if side == "encoder":
            slots = {"res_unit1": 0, "res_unit2": 1, "res_unit3": 2, "snake1": 3, "conv1": 4}
        else:
            slots = {"snake1": 0, "conv_t1": 1, "res_unit1": 2, "res_unit2": 3, "res_unit3": 4}
        if name.startswith("res_unit"):
            sub, leaf = tail.split(".", 1)
            tail = f"layers.{unit[sub]}.{leaf}"
        return f"{side}.layers.{int(i) + 1}.layers.{slots[name]}.{tail}"
    name, tail = rest.split(".", 1)
    return f"{side}.layers.{ {'conv1': 0, 'snake1': depth + 1, 'conv2': depth + 2}[name] }.{tail}"


def _official_sao_config(final_tanh: bool) -> dict:
    strides, mults = [2, 4, 4, 8, 8], [1, 1, 1, 1, 1]
    enc = {"in_channels": 2, "channels": 128, "c_mults": mults, "strides": strides, "latent_dim": 128,
           "use_snake": True}  # fmt: skip
    dec = {"out_channels": 2, "channels": 4, "c_mults": mults, "strides": strides, "latent_dim": 64, "use_snake": True,
           "final_tanh": final_tanh}  # fmt: skip
    vae = {"encoder": {"type": "oobleck", "config": enc}, "decoder": {"type": "oobleck", "config": dec},
           "bottleneck": {"type": "vae"}, "latent_dim": 64, "downsampling_ratio": 2048, "io_channels": 2}  # fmt: skip
    return {"model_type": "diffusion_cond", "sample_rate": 44100,
            "model": {"pretransform": {"type": "autoencoder", "config": vae}}}  # fmt: skip


def test_audio_loads_the_official_stable_audio_tools_layout(tiny, audio, tmp_path):
    state = {}
    for k, v in audio.model.state_dict().items():
        official = _official_oobleck_key(k, 5)
        state["pretransform.model." + official] = v.flatten() if official.endswith(("alpha", "beta")) else v
    state["model.model.other.weight"] = torch.zeros(3)  # the diffusion model's weights sit in the same file
    root = tmp_path / "stable-audio-open-1.0"
    root.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, root / "model.safetensors")
    (root / "model_config.json").write_text(json.dumps(_official_sao_config(final_tanh=False)))
    wave = torch.randn(1, 2, 2048 * 3, generator=torch.Generator().manual_seed(3)) * 0.1
    official = load_audio_vae(root)
    assert not official.final_tanh
    z = official.encode(wave)
    assert torch.equal(z, audio.encode(wave))
    torch.testing.assert_close(official.decode(z), audio.decode(z))
    (root / "model_config.json").write_text(json.dumps(_official_sao_config(final_tanh=True)))
    tanh = load_audio_vae(root)
    torch.testing.assert_close(tanh.decode(z), torch.tanh(audio.decode(z)))
    # the real repository also has vae/ (diffusers): that one wins
    shutil.copytree(tiny.audio_vae, root / "vae")
    assert not load_audio_vae(root).final_tanh


def test_official_audio_config_is_read_from_the_pretransform():
    config = oobleck_config_from_official(_official_sao_config(final_tanh=False))
    assert config == {"encoder_hidden_size": 128, "downsampling_ratios": [2, 4, 4, 8, 8],
                      "channel_multiples": [1, 1, 1, 1, 1], "decoder_channels": 4, "decoder_input_channels": 64,
                      "audio_channels": 2, "sampling_rate": 44100, "final_tanh": False}  # fmt: skip
    with pytest.raises(EncoderError, match=r"model\.pretransform"):
        oobleck_config_from_official({"model": {}}, "x/model_config.json")


# ---------------------------------------------------------------------------------------------- text


def test_text_is_padded_to_640_with_real_lengths(text):
    prompts = ["hello", "A presenter speaks to the camera. Dialogue: 主持人", ""]
    feats, lengths = text.encode(prompts)
    assert feats.shape == (3, 640, 32) and feats.dtype == torch.float32 and text.hidden_size == 32
    assert lengths.dtype == torch.int64
    ids = [text.tokenizer(p)["input_ids"] for p in prompts]
    assert lengths.tolist() == [len(i) for i in ids] and lengths[2] == 1  # "" is just <bos>
    for b in range(3):
        assert feats[b, lengths[b] :].abs().sum() == 0 and feats[b, : lengths[b]].abs().sum(-1).min() > 0


def test_text_features_are_the_fp16_rounded_last_hidden_state(text):
    prompt = "a presenter speaks to the camera"
    feats, lengths = text.encode([prompt])
    batch = text.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        hidden = text.model(**batch).last_hidden_state[0]
    assert torch.equal(feats[0, : lengths[0]], hidden.half().float())  # official: last_hidden_state.half()


def test_text_batches_match_one_prompt_at_a_time(text):
    prompts = ["hi", "Ein Sprecher, un présentateur speaks to the camera in a quiet room.", "主持人 speaks."]
    together, n = text.encode(prompts)
    for i, p in enumerate(prompts):
        alone, m = text.encode([p])
        assert m[0] == n[i]
        torch.testing.assert_close(together[i], alone[0], rtol=0, atol=2e-3)


def test_text_is_trimmed_after_encoding_the_whole_prompt(tiny, text):
    short = load_text_encoder(tiny.text_encoder, max_length=3)
    prompt = "a presenter speaks to the camera"
    f, n = short.encode([prompt])
    full, _ = text.encode([prompt])
    assert f.shape == (1, 3, 32) and int(n[0]) == 3
    assert torch.equal(f[0], full[0, :3])  # official pad_or_trim: the encoder sees every token, then 640 are kept


# ----------------------------------------------------------------------------------- tiny + fingerprint


def test_tiny_builder_is_deterministic_and_leaves_the_rng_alone(tiny, tmp_path):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    again = build_tiny_encoders(tmp_path / "again", seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert encoders_fingerprint(again) == encoders_fingerprint(tiny)
    stamp = (tmp_path / "again" / "tiny_encoders.json").stat().st_mtime_ns
    assert build_tiny_encoders(tmp_path / "again", seed=0) == again  # reused, not rebuilt
    assert (tmp_path / "again" / "tiny_encoders.json").stat().st_mtime_ns == stamp


def test_tiny_video_vae_keeps_the_wan22_geometry(video, audio):
    cfg = video.model.config
    assert (cfg.z_dim, cfg.patch_size, cfg.is_residual, cfg.scale_factor_spatial, cfg.scale_factor_temporal) == (
        48, 2, True, 16, 4)  # fmt: skip
    assert list(cfg.temperal_downsample) == [False, True, True]
    assert list(audio.model.config.downsampling_ratios) == [2, 4, 4, 8, 8]


def test_fingerprint_is_stable_and_sensitive(tiny, tmp_path):
    fp = encoders_fingerprint(tiny)
    assert re.fullmatch(r"[0-9a-f]{16}", fp) and encoders_fingerprint(tiny) == fp
    copy = tmp_path / "copy"
    shutil.copytree(tiny.video_vae.parent, copy)
    moved = EncoderPaths(video_vae=copy / "video_vae", audio_vae=copy / "audio_vae", text_encoder=copy / "text_encoder")
    assert encoders_fingerprint(moved) == fp  # content, not location
    assert encoders_fingerprint(build_tiny_encoders(tmp_path / "other", seed=1)) != fp
    weights = copy / "audio_vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert encoders_fingerprint(moved) != fp
    tokenizer = copy / "text_encoder" / "tokenizer.json"
    moved2 = tmp_path / "copy2"
    shutil.copytree(tiny.video_vae.parent, moved2)
    (moved2 / "text_encoder" / "tokenizer.json").write_text(tokenizer.read_text().replace("<bos>", "<BOS>"))
    paths2 = EncoderPaths(video_vae=moved2 / "video_vae", audio_vae=moved2 / "audio_vae",
                          text_encoder=moved2 / "text_encoder")  # fmt: skip
    assert encoders_fingerprint(paths2) != fp


# -------------------------------------------------------------------------------------------- errors


def _file(tmp_path, name: str, content: bytes):
    (tmp_path / name).write_bytes(content)
    return tmp_path / name


def _sat_folder_without_weights(tmp_path):
    (tmp_path / "sat").mkdir()
    (tmp_path / "sat" / "model_config.json").write_text("{}")
    return tmp_path / "sat"


# (loader, the path it is given from (tiny encoders, tmp_path), the error it must raise)
BAD_PATHS = {
    "video_missing": (load_video_vae, lambda _tiny, tmp: tmp / "nope",
                      r"video VAE: .*nope does not exist; expected a diffusers AutoencoderKLWan"),
    "video_empty_folder": (load_video_vae, lambda _tiny, tmp: tmp,
                           r"video VAE not found at .*: expected .*Wan2.2_VAE.pth"),
    "audio_missing": (load_audio_vae, lambda _tiny, tmp: tmp / "nope",
                      r"audio VAE: .*nope does not exist; expected .*model_config.json"),
    "audio_empty_folder": (load_audio_vae, lambda _tiny, tmp: tmp,
                           r"audio VAE not found at .*: expected a diffusers AutoencoderOobleck"),
    "text_empty_folder": (load_text_encoder, lambda _tiny, tmp: tmp,
                          r"text encoder not found at .*: expected a transformers T5Gemma folder"),
    "text_missing": (load_text_encoder, lambda _tiny, tmp: tmp / "nope", r"text encoder: .*nope does not exist"),
    "video_given_the_audio_vae": (load_video_vae, lambda tiny, _tmp: tiny.audio_vae,
                                  r"video VAE: .*config.json describes a AutoencoderOobleck, expected a Aut"),
    "audio_given_the_video_vae": (load_audio_vae, lambda tiny, _tmp: tiny.video_vae,
                                  r"audio VAE: .*describes a AutoencoderKLWan, expected a AutoencoderOobleck"),
    "text_given_the_video_vae": (load_text_encoder, lambda tiny, _tmp: tiny.video_vae,
                                 r"text encoder at .*model_type None, expected 't5gemma'"),
    "video_not_a_pth": (load_video_vae, lambda _tiny, tmp: _file(tmp, "weights.txt", b"x"),
                        r"weights.txt is a file but not a .pth checkpoint"),
    "video_broken_pth": (load_video_vae, lambda _tiny, tmp: _file(tmp, "broken.pth", b"not a checkpoint"),
                         r"cannot read the official checkpoint .*broken.pth"),
    "audio_sat_without_weights": (load_audio_vae, lambda _tiny, tmp: _sat_folder_without_weights(tmp),
                                  r"sat has model_config.json but no model.safetensors"),
    "fingerprint_without_text_encoder": (
        encoders_fingerprint, lambda tiny, tmp: EncoderPaths(video_vae=tiny.video_vae, audio_vae=tiny.audio_vae,
                                                             text_encoder=tmp), "text encoder not found"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_PATHS)
def test_bad_paths_name_the_path_and_the_expected_layout(case, tiny, tmp_path):
    load, path, message = BAD_PATHS[case]
    with pytest.raises(EncoderError, match=message):
        load(path(tiny, tmp_path))


def test_missing_tokenizer_and_wrong_geometry_are_refused(tiny, tmp_path):
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    shutil.copy(tiny.text_encoder / "config.json", no_tok / "config.json")
    with pytest.raises(EncoderError, match=r"no_tok: no tokenizer files"):
        load_text_encoder(no_tok)
    wide = tmp_path / "wan16"
    shutil.copytree(tiny.video_vae, wide)
    cfg = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps(cfg | {"patch_size": None, "scale_factor_spatial": 8}))
    with pytest.raises(EncoderError, match=r"wan16: .*HappyHorse takes the Wan2.2 VAE"):
        load_video_vae(wide)


def test_bad_inputs_are_refused_with_the_shape(video, audio, text):
    with pytest.raises(EncoderError, match=r"F = 4k\+1 .* got \(1, 3, 8, 32, 32\)"):
        video.encode(_frames(1, 8, 32, 32))
    with pytest.raises(EncoderError, match=r"multiples of 16, got \(1, 3, 5, 40, 32\)"):
        video.encode(_frames(1, 5, 40, 32))
    with pytest.raises(EncoderError, match=r"frames must be a 5-d tensor \[B, 3, F, H, W\], got \(3, 5, 32, 32\)"):
        video.encode(_frames(1, 5, 32, 32)[0])
    with pytest.raises(EncoderError, match=r"video latents must be \[B, 48, T, H, W\], got \(1, 16, 2, 2, 2\)"):
        video.decode(torch.zeros(1, 16, 2, 2, 2))
    with pytest.raises(EncoderError, match=r"N >= 2048 \(one latent\), got \(1, 2, 100\)"):
        audio.encode(torch.zeros(1, 2, 100))
    with pytest.raises(EncoderError, match=r"audio must be \[B, 2, N\] .* got \(1, 3, 4096\)"):
        audio.encode(torch.zeros(1, 3, 4096))
    with pytest.raises(EncoderError, match=r"audio latents must be \[B, La, 64\] with La >= 1, got \(1, 64, 5\)"):
        audio.decode(torch.zeros(1, 64, 5))
    with pytest.raises(EncoderError, match="prompts must be a list of strings"):
        text.encode("a single string")
    assert issubclass(EncoderError, ValueError)
