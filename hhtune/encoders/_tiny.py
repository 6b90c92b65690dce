"""Tiny random-weight configs of the real encoder classes, saved the way real checkpoints are."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from ..contract import AUDIO_LATENT_CHANNELS, AUDIO_SAMPLE_RATE, VIDEO_LATENT_CHANNELS
from ._common import EncoderPaths
from .turbo_vae import TurboVAE, TurboVAEConfig
from .video import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD

# Bumped whenever the tiny configs change, so a folder built by older code is rebuilt.
_TINY_VERSION = 3
_STAMP = "tiny_encoders.json"
#: The Turbo VAE student's layout (``TurboV3-Wan22-TinyShallow_7_7.json``: a spatial-only third level,
#: depthwise convolutions allowed, unpatchify, chunks of 7 latent frames) at widths of 4 to 16.
TINY_TURBO_CONFIG = {
    "_class_name": "TurboVAED", "latent_channels": VIDEO_LATENT_CHANNELS, "out_channels": 3,
    "decoder_block_out_channels": [4, 8, 8, 16], "decoder_layers_per_block": [1, 1, 1, 1, 1],
    "decoder_spatio_temporal_scaling": [False, True, True, True], "decoder_spatio_only": [False, True, False, False],
    "decoder_is_dw_conv": [False, False, False, True, True], "decoder_dw_kernel_size": 5, "patch_size": 2,
    "use_unpatchify": True, "first_chunk_size": 7, "step_size": 7,
}  # fmt: skip


def build_tiny_encoders(out_dir: str | Path, seed: int = 0, text_hidden_size: int = 32) -> EncoderPaths:
    """Random-weight tiny encoders in ``out_dir/{video_vae,audio_vae,text_encoder}`` (tests, quick start).

    They are instances of the real classes saved with ``save_pretrained``, so they load through
    :func:`load_video_vae` and friends. The video VAE keeps 48 latent channels, patch size 2 and the
    4x16x16 stride; the audio VAE 64 latent channels and the 2048 hop (the real strides 2,4,4,8,8);
    only widths and depths shrink. Weights depend only on ``seed`` (the caller's RNG state is left
    alone). Calling again with the same arguments reuses the folders.
    """
    out = Path(out_dir)
    paths = EncoderPaths(video_vae=out / "video_vae", audio_vae=out / "audio_vae", text_encoder=out / "text_encoder")
    stamp = out / _STAMP
    want = {"seed": seed, "text_hidden_size": text_hidden_size, "version": _TINY_VERSION}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return paths
    with torch.random.fork_rng(devices=[]):
        _save_tiny_video_vae(paths.video_vae, seed)
        _save_tiny_audio_vae(paths.audio_vae, seed)
        _save_tiny_text_encoder(paths.text_encoder, seed, text_hidden_size)
    build_tiny_turbo_vae(out / "turbo_vae", seed)
    stamp.write_text(json.dumps(want))
    return paths


def _save_tiny_video_vae(path: Path, seed: int) -> None:
    """A Wan2.2-style ``AutoencoderKLWan`` (residual blocks, patch 2, z_dim 48, 4x16x16) four channels wide."""
    from diffusers import AutoencoderKLWan  # noqa: PLC0415 -- heavy: diffusers loads in ~2 s, only building the tiny VAE needs it

    torch.manual_seed(seed)
    model = AutoencoderKLWan(
        base_dim=4, decoder_base_dim=4, z_dim=VIDEO_LATENT_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True], dropout=0.0, is_residual=True, in_channels=12, out_channels=12,
        patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
        latents_mean=list(WAN22_LATENTS_MEAN), latents_std=list(WAN22_LATENTS_STD),
    )  # fmt: skip
    model.save_pretrained(path)


def _save_tiny_audio_vae(path: Path, seed: int) -> None:
    """An ``AutoencoderOobleck`` with the Stable Audio Open strides (hop 2048) and 64 latent channels.

    diffusers ties the encoder width to ``encoder_hidden_size`` (= 2 x 64, mean and scale), so
    the encoder keeps 128 channels at every level and only the decoder narrows.
    """
    from diffusers import AutoencoderOobleck  # noqa: PLC0415 -- heavy: diffusers loads in ~2 s, only building the tiny VAE needs it

    torch.manual_seed(seed)
    model = AutoencoderOobleck(
        encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 8, 8], channel_multiples=[1, 1, 1, 1, 1],
        decoder_channels=4, decoder_input_channels=AUDIO_LATENT_CHANNELS, audio_channels=2,
        sampling_rate=AUDIO_SAMPLE_RATE,
    )  # fmt: skip
    model.save_pretrained(path)


def _save_tiny_text_encoder(path: Path, seed: int, hidden_size: int) -> None:
    """A one-layer ``T5GemmaEncoderModel`` and an offline-trained byte-level BPE tokenizer that adds ``<bos>``."""
    from transformers import PreTrainedTokenizerFast, T5GemmaConfig, T5GemmaEncoderModel, T5GemmaModuleConfig  # noqa: PLC0415 -- heavy: transformers loads in ~1 s, only building the tiny text encoder needs it

    if hidden_size < 4 or hidden_size % 2:
        raise ValueError(f"text_hidden_size must be an even number >= 4, got {hidden_size}")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=alphabet)
    corpus = ["A presenter speaks to the camera. Dialogue: Background Sound: quiet room.",
              "Ein Sprecher, un présentateur, 主持人, 司儀, 発表者, 발표자 speaks."]  # fmt: skip
    tok.train_from_iterator(corpus, trainer)
    bos = [("<bos>", tok.token_to_id("<bos>"))]
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=bos)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")  # fmt: skip
    module = dict(vocab_size=fast.vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=hidden_size // 2,
                  max_position_embeddings=1024, sliding_window=64)  # fmt: skip
    config = T5GemmaConfig(encoder=T5GemmaModuleConfig(**module), decoder=T5GemmaModuleConfig(**module),
                           is_encoder_decoder=False, vocab_size=fast.vocab_size)  # fmt: skip
    torch.manual_seed(seed)
    model = T5GemmaEncoderModel(config)
    model.save_pretrained(path)
    fast.save_pretrained(path)


def build_tiny_turbo_vae(out_dir: str | Path, seed: int = 0) -> Path:
    """A random-weight :data:`TINY_TURBO_CONFIG` Turbo VAE in the official layout: ``out_dir`` holding the JSON
    config and ``tiny_turbo_vae.ckpt``, a pickle of ``{"ema_state_dict": ..., "step": 0}`` whose keys carry the
    ``module.`` prefix of a DDP-trained student, with a distillation head beside the decoder as in the official
    checkpoint. It reads with ``weights_only=True`` (tensors, a dict, an int).
    Weights depend only on ``seed``; the caller's RNG state is left alone. Returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TurboVAE(TurboVAEConfig(**{k: v for k, v in TINY_TURBO_CONFIG.items() if not k.startswith("_")}))
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.aligned_feature_projection_heads.0.0.weight"] = torch.zeros(4, 4)  # distillation-only, as upstream
    torch.save({"ema_state_dict": state, "step": 0}, out / "tiny_turbo_vae.ckpt")
    (out / "tiny_turbo_vae.json").write_text(json.dumps(TINY_TURBO_CONFIG, indent=2))
    return out
