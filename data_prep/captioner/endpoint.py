"""Captions from an OpenAI-compatible server (vLLM, SGLang, llama.cpp, ...), called with the official ``openai`` client.

Each clip is one chat-completions request: its frames as ``image_url`` data URIs (JPEG), its sound as
``input_audio`` (16 kHz mono WAV, when ``captioner.audio``), then the prompt. The client retries a failed or
timed-out request ``captioner.retries`` times; after that the stage stops with the URL and the error.
"""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import soundfile
from PIL import Image

from hhtune.contract import SPEECH_SAMPLE_RATE

from ..config import CaptionerConfig
from .media import CaptionerError, ClipMedia


class EndpointCaptioner:
    """One request per clip to ``cfg.endpoint`` for ``cfg.model``."""

    def __init__(self, cfg: CaptionerConfig) -> None:
        import openai  # noqa: PLC0415 -- only the endpoint captioner needs the client

        self.cfg = cfg
        self.hears = cfg.audio
        self.identity = f"endpoint:{cfg.model}"
        self.batch_size = 1
        self._errors = (openai.APIError, openai.APITimeoutError, openai.APIConnectionError)
        self._client = openai.OpenAI(base_url=cfg.endpoint, api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
                                     timeout=cfg.timeout_s, max_retries=cfg.retries)  # fmt: skip

    def answer(self, batch: list[ClipMedia], prompt: str) -> list[str]:
        """The model's raw answer for each clip of ``batch``."""
        return [self._one(m, prompt) for m in batch]

    def _one(self, media: ClipMedia, prompt: str) -> str:
        content: list[dict] = [{"type": "image_url", "image_url": {"url": _jpeg_uri(f)}} for f in media.frames]
        if self.hears and media.audio is not None:
            content.append({"type": "input_audio", "input_audio": {"data": _wav_b64(media.audio), "format": "wav"}})
        content.append({"type": "text", "text": prompt})
        try:
            reply = self._client.chat.completions.create(
                model=self.cfg.model, messages=[{"role": "user", "content": content}],
                max_tokens=self.cfg.max_new_tokens, temperature=0.2)  # fmt: skip
        except self._errors as e:
            raise CaptionerError(f"captioner endpoint {self.cfg.endpoint} failed after {self.cfg.retries + 1} "
                                 f"tries: {type(e).__name__}: {e}") from e  # fmt: skip
        choices = reply.choices or []
        return (choices[0].message.content or "") if choices else ""


def _jpeg_uri(frame: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _wav_b64(mono16k: np.ndarray) -> str:
    buf = io.BytesIO()
    soundfile.write(buf, np.clip(mono16k, -1.0, 1.0), SPEECH_SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


__all__ = ["EndpointCaptioner"]
