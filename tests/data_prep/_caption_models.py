"""Tiny random Qwen captioners (real transformers classes) and their tokenizer, built offline in a test's folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

OMNI_TOKENS = ["<|vision_bos|>", "<|IMAGE|>", "<|vision_eos|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>",
               "<|VIDEO|>"]
OMNI3_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|audio_start|>", "<|audio_pad|>",
                "<|audio_end|>", "<|video_pad|>"]
VL_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]


def _tokenizer(folder: Path, extra: list[str]):
    """A byte-level BPE tokenizer trained on a few words, with ChatML and the model's placeholder tokens."""
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *extra]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["DESCRIPTION: A woman speaks. SPEAKER: woman BACKGROUND SOUND: music"],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.save_pretrained(folder)
    return fast


def build_tiny_omni(folder: Path) -> Path:
    """A tiny random ``Qwen2_5OmniForConditionalGeneration`` (thinker only) with its processors' configs."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    tok = _tokenizer(folder, OMNI_TOKENS)
    ids = {t: tok.convert_tokens_to_ids(t) for t in OMNI_TOKENS}
    thinker = dict(
        audio_config=dict(num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=16, d_model=16,
                          output_dim=32, n_window=50),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0]),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4}),
        audio_token_index=ids["<|AUDIO|>"], image_token_index=ids["<|IMAGE|>"], video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"], audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"], user_token_id=tok.convert_tokens_to_ids("<|im_start|>"))
    torch.manual_seed(0)
    Qwen2_5OmniForConditionalGeneration(Qwen2_5OmniConfig(enable_audio_output=False, thinker_config=thinker)) \
        .save_pretrained(folder)
    _save_preprocessors(folder, patch_size=14)
    torch.save({}, folder / "spk_dict.pt")  # real checkpoints ship their voices; from_pretrained requires the file
    return folder


def build_tiny_omni3(folder: Path) -> Path:
    """A tiny random ``Qwen3OmniMoeForConditionalGeneration`` (thinker only: two experts, one layer)."""
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    tok = _tokenizer(folder, OMNI3_TOKENS)
    ids = {t: tok.convert_tokens_to_ids(t) for t in OMNI3_TOKENS}
    thinker = dict(
        audio_config=dict(num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=16, d_model=16,
                          output_dim=32, downsample_hidden_size=8),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
                           deepstack_visual_indexes=[0], patch_size=16),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, moe_intermediate_size=16,
                         num_experts=2, num_experts_per_tok=1,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4,
                                          "mrope_interleaved": True}),
        audio_token_id=ids["<|audio_pad|>"], image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        audio_start_token_id=ids["<|audio_start|>"], vision_start_token_id=ids["<|vision_start|>"])
    torch.manual_seed(0)
    Qwen3OmniMoeForConditionalGeneration(Qwen3OmniMoeConfig(enable_audio_output=False, thinker_config=thinker)) \
        .save_pretrained(folder)
    _save_preprocessors(folder, patch_size=16)
    return folder


def _save_preprocessors(folder: Path, patch_size: int) -> None:
    """One preprocessor_config.json holding the image processor and the audio feature extractor, as the released
    Omni folders have it."""
    from transformers import Qwen2VLImageProcessor, WhisperFeatureExtractor

    side = patch_size * 2
    image = Qwen2VLImageProcessor(patch_size=patch_size, min_pixels=side * side * 4, max_pixels=side * side * 16)
    sound = WhisperFeatureExtractor(feature_size=16).to_dict()
    (folder / "preprocessor_config.json").write_text(json.dumps({**sound, **image.to_dict()}, default=str))


def build_tiny_vl(folder: Path) -> Path:
    """A tiny random ``Qwen2_5_VLForConditionalGeneration`` with its image processor."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessor,
    )

    tok = _tokenizer(folder, VL_TOKENS)
    ids = {t: tok.convert_tokens_to_ids(t) for t in VL_TOKENS}
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0]),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4}),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(folder)
    Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16).save_pretrained(folder)
    return folder
