"""Tiny random-weight configs of the real encoder classes, written to disk like real checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_video_vae(path: Path, seed: int) -> None:
    """A Wan2.2-style ``AutoencoderKLWan`` (z_dim 48, patch 2, residual, 4x16x16) with narrow layers."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    model = AutoencoderKLWan(
        base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0, is_residual=True,
        in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
        latents_mean=torch.linspace(-0.5, 0.5, 48).tolist(), latents_std=torch.linspace(0.5, 1.5, 48).tolist(),
    )  # fmt: skip
    model.save_pretrained(path)


def save_tiny_audio_vae(path: Path, seed: int) -> None:
    """An ``AutoencoderOobleck`` with the Stable Audio Open hop (2048) and 64 latent channels, shallow layers.

    diffusers ties the encoder output width to ``encoder_hidden_size`` (= 2 x 64 for mean and scale),
    so only the channel multiples and the decoder shrink.
    """
    from diffusers import AutoencoderOobleck

    torch.manual_seed(seed)
    model = AutoencoderOobleck(
        encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 8, 8], channel_multiples=[1, 1, 1, 1, 1],
        decoder_channels=4, decoder_input_channels=64, audio_channels=2, sampling_rate=51200,
    )  # fmt: skip
    model.save_pretrained(path)


def save_tiny_text_encoder(path: Path, seed: int, hidden_size: int) -> None:
    """A one-layer ``T5GemmaEncoderModel`` and a byte-level BPE tokenizer trained offline on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, T5GemmaConfig, T5GemmaEncoderModel, T5GemmaModuleConfig

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    corpus = ["A presenter speaks to the camera. Dialogue: Background Sound: quiet room.",
              "Ein Sprecher, un présentateur, 主持人, 司儀, 発表者, 발표자 speaks."]  # fmt: skip
    tok.train_from_iterator(corpus, trainer)
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
