"""The T5Gemma text encoder (``t5gemma-9b-9b-ul2``, hidden 3584) through transformers.

As the official pipeline does (``inference/model/t5_gemma/t5_gemma_model.py``, ``T5GemmaEncoder``;
``inference/pipeline/prompt_process.py``, ``get_padded_t5_gemma_embedding``):

* the tokenizer's own defaults (special tokens included), no truncation before the encoder;
* ``T5GemmaEncoderModel.from_pretrained(..., is_encoder_decoder=False)`` and its ``last_hidden_state``;
* the features rounded through float16 (the official ``.half()``), then float32;
* padded with zeros or trimmed to 640 tokens; the length is the real token count, capped at 640.

The official code encodes one prompt at a time; here prompts are batched with right padding and
an attention mask, which leaves each prompt's features unchanged (the encoder is bidirectional
over the unmasked tokens only, and positions count from the first token).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..contract import TEXT_LENGTH
from ._common import EncoderError, _device_of, _existing, default_dtype

_EXPECTED = "a transformers T5Gemma folder (config.json with model_type t5gemma, weights and tokenizer files)"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class TextEncoder:
    """T5Gemma encoder: prompts -> ``[B, max_length, C]`` float32 features (zero padded) and int64 lengths, on CPU."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_length: int = TEXT_LENGTH, batch_size: int = 8) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        config = model.config
        self.hidden_size = int(config.encoder.hidden_size if hasattr(config, "encoder") else config.hidden_size)

    @property
    def device(self) -> torch.device:
        return _device_of(self.model)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Features ``[B, max_length, C]`` and lengths ``[B]`` of ``prompts`` (``B = len(prompts)``)."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise EncoderError("prompts must be a list of strings")
        feats = torch.zeros(len(prompts), self.max_length, self.hidden_size)
        lengths = torch.zeros(len(prompts), dtype=torch.int64)
        step = self.batch_size if self.tokenizer.pad_token_id is not None else 1
        for start in range(0, len(prompts), step):
            for i, hidden in enumerate(self._encode(prompts[start : start + step]), start):
                n = min(hidden.shape[0], self.max_length)
                feats[i, :n] = hidden[:n]
                lengths[i] = n
        return feats, lengths

    def _encode(self, prompts: list[str]) -> list[Tensor]:
        """Each prompt's ``[L, C]`` features (official numerics: fp16-rounded ``last_hidden_state``)."""
        batch = self.tokenizer(prompts, return_tensors="pt", padding=len(prompts) > 1, padding_side="right")
        mask = batch["attention_mask"]
        if int(mask.sum(1).min()) == 0:
            raise EncoderError("the tokenizer produced no tokens for a prompt; it must add at least <bos>")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state.to(torch.float16).float().cpu()
        return [hidden[b, : int(mask[b].sum())] for b in range(len(prompts))]


def load_text_encoder(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                      max_length: int = TEXT_LENGTH) -> TextEncoder:  # fmt: skip
    """The T5Gemma encoder and its tokenizer from a local transformers folder (e.g. ``t5gemma-9b-9b-ul2``).

    ``dtype`` None: bf16 on CUDA, fp32 elsewhere (the features are fp16-rounded either way).
    """
    from transformers import AutoTokenizer, T5GemmaEncoderModel  # noqa: PLC0415 -- heavy: transformers loads in ~1 s, only loading the text encoder needs it

    dtype = dtype or default_dtype(device)
    if max_length < 1:
        raise EncoderError(f"max_length must be at least 1, got {max_length}")
    folder = _existing(path, "text encoder", _EXPECTED)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise EncoderError(f"text encoder not found at {folder}: expected {_EXPECTED}")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "t5gemma":
        raise EncoderError(f"text encoder at {folder}: config.json has model_type {model_type!r}, expected 't5gemma'")
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise EncoderError(f"text encoder at {folder}: no tokenizer files (one of {', '.join(_TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = T5GemmaEncoderModel.from_pretrained(folder, is_encoder_decoder=False, dtype=dtype,
                                                    local_files_only=True)  # fmt: skip
    except (OSError, ValueError) as e:
        raise EncoderError(f"text encoder: cannot load {folder}: {e}") from e
    return TextEncoder(model.to(device).eval().requires_grad_(False), tokenizer, max_length)
