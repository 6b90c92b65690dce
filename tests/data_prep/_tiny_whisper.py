"""A tiny random Whisper folder built offline: model, tokenizer (a byte-level BPE vocabulary of a few German words,
no merges) and feature extractor, as :class:`data_prep.asr.Whisper` loads them.

Its decoder is rigged so that what it says is known: the last layer norm answers a constant vector ``v`` (weight
0, bias ``v``), and the tied output embedding gives ``<|es|>`` the highest logit, then ``<|de|>``, then the word
``guten``. So unrestricted language ID would answer Spanish, restricted to the seven it must answer German, and
the transcript is ``guten`` repeated, with a low token probability (the other words are close behind): every cue
is a low-confidence one. The cross-attention (and so the word timestamps) still depends on the audio.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ["guten", "morgen", "und", "willkommen", "zur", "sendung", "danke", "tschuess"]
LANGS = ["en", "zh", "de", "es", "fr", "ja", "ko"]  # no <|yue|>: like Whisper before large-v3
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", *[f"<|{c}|>" for c in LANGS], "<|translate|>",
            "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]  # fmt: skip
NEW_TOKENS = 4  # the longest transcript, in words, of one window


def build_tiny_whisper(folder: Path) -> Path:
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"\u0120" + w: i for i, w in enumerate(WORDS)} | {".": len(WORDS)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    eot = SPECIALS[0]
    tok = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=eot, bos_token=eot,
                           eos_token=eot, pad_token=eot)  # fmt: skip
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    ids = {s: tok.convert_tokens_to_ids(s) for s in SPECIALS}
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tok).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=len(tok), num_mel_bins=80, encoder_layers=1, decoder_layers=1, d_model=16,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                        max_source_positions=1500, max_target_positions=32, pad_token_id=ids[eot],
                        bos_token_id=ids[eot], eos_token_id=ids[eot],
                        decoder_start_token_id=ids["<|startoftranscript|>"])  # fmt: skip
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        v = torch.randn(16)
        v = v / v.norm()  # |v|^2 = 1: a logit is the row's multiple of v
        norm = model.model.decoder.layer_norm
        norm.weight.zero_()
        norm.bias.copy_(v)
        emb = model.model.decoder.embed_tokens.weight  # tied with the output projection
        emb.zero_()
        emb[ids["<|es|>"]] = 9 * v
        emb[ids["<|de|>"]] = 6 * v
        emb[ids["<|en|>"]] = 3 * v
        emb[vocab["\u0120guten"]] = 1.0 * v
        emb[ids[eot]] = -1 * v  # never ends early: every window says NEW_TOKENS words
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids[eot], pad_token_id=ids[eot],
        bos_token_id=ids[eot], lang_to_id={f"<|{c}|>": ids[f"<|{c}|>"] for c in LANGS},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        is_multilingual=True, alignment_heads=[[0, 0], [0, 1]], max_new_tokens=NEW_TOKENS,
        suppress_tokens=[ids[s] for s in SPECIALS[1:]])  # fmt: skip
    model.save_pretrained(folder)
    return folder
