"""Captions from a local model folder loaded with transformers: Qwen2.5-Omni / Qwen3-Omni (frames and sound) or
Qwen2.5-VL / Qwen3-VL (frames only), batched, on the GPU when there is one.

The model inputs are built from the folder's tokenizer, image processor and (Omni) audio feature extractor: the
frames go in as images, the sound as one audio entry, each placeholder token repeated as many times as the model
has embeddings for it. (The families' combined processors need torchvision for their video part, which captioning
from frames does not use.)
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from hhtune.contract import SPEECH_SAMPLE_RATE

from ..config import CaptionerConfig
from .media import CaptionerError, ClipMedia


@dataclass(frozen=True)
class _Family:
    model_class: str
    hears: bool
    image: tuple[str, str, str]  # start, placeholder, end tokens
    audio: tuple[str, str, str] | None
    lengths_module: str | None = None  # transformers module whose _get_feat_extract_output_lengths counts audio tokens


_QWEN_VISION = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
FAMILIES = {
    "qwen2_5_omni": _Family("Qwen2_5OmniForConditionalGeneration", True,
                            ("<|vision_bos|>", "<|IMAGE|>", "<|vision_eos|>"),
                            ("<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"),
                            "transformers.models.qwen2_5_omni.processing_qwen2_5_omni"),
    "qwen3_omni_moe": _Family("Qwen3OmniMoeForConditionalGeneration", True, _QWEN_VISION,
                              ("<|audio_start|>", "<|audio_pad|>", "<|audio_end|>"),
                              "transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe"),
    "qwen2_5_vl": _Family("Qwen2_5_VLForConditionalGeneration", False, _QWEN_VISION, None),
    "qwen3_vl": _Family("Qwen3VLForConditionalGeneration", False, _QWEN_VISION, None),
}  # fmt: skip


def local_family(folder: Path) -> tuple[str, _Family]:
    """The model type named by ``folder/config.json`` and its family; a folder that is not one names what it found."""
    config = folder / "config.json"
    if not config.is_file():
        raise CaptionerError(f"captioner folder {folder} has no config.json: it is not a transformers model folder "
                             f"(found: {', '.join(sorted(p.name for p in folder.iterdir())[:8]) or 'nothing'})"
                             if folder.is_dir() else f"captioner folder not found: {folder}")  # fmt: skip
    model_type = json.loads(config.read_text()).get("model_type", "")
    if model_type not in FAMILIES:
        raise CaptionerError(f"captioner folder {folder} holds a {model_type or 'model of unknown type'!s} model; "
                             f"supported: Qwen2.5-Omni, Qwen3-Omni, Qwen2.5-VL, Qwen3-VL ({', '.join(FAMILIES)})")
    return model_type, FAMILIES[model_type]


def local_identity(folder: Path) -> str:
    """The model part of the cache key: its type, its config and the names and sizes of its weight files."""
    model_type, _ = local_family(folder)
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for p in sorted(folder.glob("*.safetensors")):
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    return f"local:{model_type}:{h.hexdigest()[:16]}"


class LocalCaptioner:
    """A local Qwen Omni/VL model answering ``batch_size`` clips at a time (greedy decoding: reproducible)."""

    def __init__(self, cfg: CaptionerConfig) -> None:
        import transformers  # noqa: PLC0415 -- heavy: only a local captioner needs the model classes

        folder = Path(cfg.model)
        self.family = local_family(folder)[1]
        self.identity, self.hears, self.batch_size = local_identity(folder), self.family.hears, cfg.batch_size
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        kwargs = {"enable_audio_output": False} if self.family.hears else {}
        self.model = getattr(transformers, self.family.model_class).from_pretrained(folder, dtype=dtype, **kwargs)
        self.model.to(self.device).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, padding_side="left")
        self.images = transformers.AutoImageProcessor.from_pretrained(folder)
        self.sound = transformers.AutoFeatureExtractor.from_pretrained(folder) if self.family.hears else None
        self.max_new_tokens = cfg.max_new_tokens

    @torch.no_grad()
    def answer(self, batch: list[ClipMedia], prompt: str) -> list[str]:
        """The model's raw answer for each clip of ``batch``."""
        inputs = self._inputs(batch, prompt)
        talker_free = getattr(self.model, "thinker", self.model)  # Omni: the text half; the talker stays unloaded
        out = talker_free.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        seq = out if torch.is_tensor(out) else out.sequences
        return self.tokenizer.batch_decode(seq[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def _inputs(self, batch: list[ClipMedia], prompt: str) -> dict[str, torch.Tensor]:
        frames = [f for m in batch for f in m.frames]
        pix = self.images(images=frames, return_tensors="pt")
        merge = getattr(self.images, "merge_size", 2) ** 2
        counts = iter((pix["image_grid_thw"].prod(-1) // merge).tolist())
        out = dict(pix)
        heard = [m.audio for m in batch if self.hears and m.audio is not None]
        lengths = iter([])
        if heard:
            feats = self.sound(heard, sampling_rate=SPEECH_SAMPLE_RATE, return_attention_mask=True,
                               padding="max_length", return_tensors="pt")  # fmt: skip
            out["input_features"], out["feature_attention_mask"] = feats["input_features"], feats["attention_mask"]
            count = importlib.import_module(self.family.lengths_module)._get_feat_extract_output_lengths
            lengths = iter(count(feats["attention_mask"].sum(-1)).tolist())
        texts = []
        for m in batch:
            a, img, b = self.family.image
            parts = [a + img * next(counts) + b for _ in m.frames]
            if self.hears and m.audio is not None:
                s, tok, e = self.family.audio
                parts.append(s + tok * next(lengths) + e)
            texts.append(f"<|im_start|>user\n{''.join(parts)}{prompt}<|im_end|>\n<|im_start|>assistant\n")
        out.update(self.tokenizer(texts, return_tensors="pt", padding=True))
        dtype = self.model.dtype  # pixels and mel features in the weights' dtype (bf16 on CUDA); ids stay integers
        return {k: v.to(self.device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in out.items()}


__all__ = ["FAMILIES", "LocalCaptioner", "local_family", "local_identity"]
