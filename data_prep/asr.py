"""Transcripts for footage that has none: a local Whisper model (transformers ``WhisperForConditionalGeneration``).

* **Language ID, restricted.** The decoder's first step after ``<|startoftranscript|>`` scores every language
  token; only the seven languages' tokens are compared (softmax over them), so Whisper cannot answer Spanish for
  a clip the dataset could not hold. ``<|yue|>`` exists in large-v3 and later; an older Whisper hears Cantonese as
  ``zh``, and the transcript's characters then decide (:func:`data_prep.language.chinese_variety`).
* **Where it listens.** Only the stretches voice-activity detection heard as speech are transcribed (at most
  :data:`WINDOW_S` seconds each, Whisper's window), so music and ambience are not turned into words.
* **Cue times from word timestamps.** ``return_token_timestamps`` (cross-attention + DTW over the model's
  alignment heads) times every token; a word starts at its first token and lasts until the next word starts (the
  last word of a stretch until the stretch ends). Words are grouped into cues at sentence ends; the cues are then
  aligned like subtitle cues, and the aligned words feed segmentation.
* **Confidence.** A cue's confidence is the mean probability of its tokens; cues under
  :data:`LOW_CONFIDENCE` are flagged in the report.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hhtune.contract import LANGUAGES
from hhtune.contract import SPEECH_SAMPLE_RATE as SPEECH_RATE
from hhtune.speech.align import Interval

from .language import Detected
from .transcripts import Segment, Transcript

WINDOW_S = 30.0  # Whisper hears 30 s at a time
LOW_CONFIDENCE = 0.5  # mean token probability under which an ASR cue is flagged
_SENTENCE_END = (".", "?", "!", "\u3002", "\uff1f", "\uff01")  # and the CJK full stop, question and exclamation marks


@dataclass
class AsrResult:
    """What Whisper heard: the timed cues (``source="asr"``), and the cues it was unsure of (with confidence)."""

    transcript: Transcript
    confidence: list[float] = field(default_factory=list)  # one per cue

    def low_confidence(self) -> list[tuple[Segment, float]]:
        """The cues under :data:`LOW_CONFIDENCE`."""
        return [(s, c) for s, c in zip(self.transcript.segments, self.confidence) if c < LOW_CONFIDENCE]


class Whisper:
    """A local Whisper folder (model, tokenizer and feature extractor), on the GPU when there is one."""

    def __init__(self, folder: str | Path) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor  # noqa: PLC0415 -- heavy, only ASR needs it

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ValueError(f"asr_model {folder} is not a Whisper folder (no config.json)")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.processor = WhisperProcessor.from_pretrained(folder)
        self.model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(self.device).eval()
        tok = self.processor.tokenizer
        ids = {code: tok.convert_tokens_to_ids(f"<|{code}|>") for code in LANGUAGES}
        self.language_ids = {code: i for code, i in ids.items() if i is not None and i != tok.unk_token_id}
        if not self.language_ids:
            raise ValueError(f"asr_model {folder} has none of the language tokens <|en|>, <|de|>, ...: "
                             "is it a multilingual Whisper?")  # fmt: skip
        self.special = set(tok.all_special_ids)

    def _features(self, audio16k: np.ndarray) -> dict[str, torch.Tensor]:
        f = self.processor.feature_extractor(audio16k, sampling_rate=SPEECH_RATE, return_tensors="pt",
                                             return_attention_mask=True)  # fmt: skip
        return {"input_features": f.input_features.to(self.device, self.model.dtype),
                "attention_mask": f.attention_mask.to(self.device)}  # fmt: skip

    @torch.no_grad()
    def detect_language(self, audio16k: np.ndarray) -> Detected:
        """The most likely of the seven languages in ``audio16k`` (its first :data:`WINDOW_S` s), and how sure."""
        feats = self._features(audio16k[: int(WINDOW_S * SPEECH_RATE)])
        start = torch.tensor([[self.model.generation_config.decoder_start_token_id]], device=self.device)
        logits = self.model(input_features=feats["input_features"], decoder_input_ids=start).logits[0, -1].float()
        codes = list(self.language_ids)
        probs = torch.softmax(logits[[self.language_ids[c] for c in codes]], dim=0)
        best = int(probs.argmax())
        return Detected(codes[best], round(float(probs[best]), 3), "whisper")

    @torch.no_grad()
    def transcribe(self, audio16k: np.ndarray, language: str, offset: float = 0.0) -> AsrResult:
        """Cues of one stretch (at most :data:`WINDOW_S` s) in ``language``, timed from its word timestamps
        (``offset`` is where the stretch starts in the file)."""
        feats = self._features(audio16k)
        code = language if language in self.language_ids else "zh" if language == "yue" else None
        out = self.model.generate(**feats, language=code, task="transcribe", return_token_timestamps=True,
                                  return_dict_in_generate=True, output_scores=True)  # fmt: skip
        seq = out["sequences"][0].tolist()
        times = out["token_timestamps"][0].tolist()
        scores = out["scores"]
        first = len(seq) - len(scores)  # the prompt (<|startoftranscript|><|de|><|transcribe|>...) has no scores
        tokens = []
        for k in range(first, len(seq)):
            if seq[k] in self.special:
                continue
            p = float(torch.softmax(scores[k - first][0].float(), dim=-1)[seq[k]])
            tokens.append((seq[k], offset + float(times[k]), p))
        return self._cues(tokens, offset + len(audio16k) / SPEECH_RATE)

    def _cues(self, tokens: list[tuple[int, float, float]], end: float) -> AsrResult:
        """Tokens ``(id, time, probability)`` grouped into words, words into cues at sentence ends."""
        tok = self.processor.tokenizer
        words: list[tuple[list[int], float, list[float]]] = []
        for i, t, p in tokens:
            piece = tok.convert_ids_to_tokens(i)
            if not words or piece.startswith("\u0120"):  # byte-level BPE: a leading space starts a word
                words.append(([], t, []))
            words[-1][0].append(i)
            words[-1][2].append(p)
        result = AsrResult(Transcript(source="asr"))
        cue: list[str] = []
        probs: list[float] = []
        start = None
        for k, (ids, t, ps) in enumerate(words):
            text = tok.decode(ids).strip()
            start = t if start is None else start
            cue.append(text)
            probs += ps
            last = k + 1 == len(words)
            if last or text.endswith(_SENTENCE_END):
                stop = end if last else max(words[k + 1][1], t)
                result.transcript.segments.append(Segment(round(start, 3), round(max(stop, start), 3), " ".join(cue)))
                result.confidence.append(round(float(np.mean(probs)), 3))
                cue, probs, start = [], [], None
        return result


@functools.lru_cache(maxsize=1)
def load_whisper(folder: str) -> Whisper:
    """One Whisper per worker process."""
    return Whisper(folder)


def transcribe_stretches(audio16k: np.ndarray, stretches: list[Interval], language: str, folder: str) -> AsrResult:
    """Whisper over each stretch of ``audio16k`` (cut at :data:`WINDOW_S`), as one timed transcript of the file."""
    whisper = load_whisper(folder)
    out = AsrResult(Transcript(source="asr"))
    for s in stretches:
        t = s.start
        while t < s.end - 0.05:
            stop = min(s.end, t + WINDOW_S)
            part = whisper.transcribe(audio16k[int(t * SPEECH_RATE) : int(stop * SPEECH_RATE)], language, offset=t)
            out.transcript.segments += [seg for seg in part.transcript.segments if seg.text]
            out.confidence += [c for seg, c in zip(part.transcript.segments, part.confidence) if seg.text]
            t = stop
    return out


def detect_audio_language(audio16k: np.ndarray, stretches: list[Interval], folder: str) -> Detected:
    """Whisper's language ID over the speech ``stretches`` of ``audio16k`` (joined, up to :data:`WINDOW_S` s)."""
    speech = np.concatenate([audio16k[int(s.start * SPEECH_RATE) : int(s.end * SPEECH_RATE)] for s in stretches]
                            or [audio16k])  # fmt: skip
    return load_whisper(folder).detect_language(speech)


__all__ = ["LOW_CONFIDENCE", "WINDOW_S", "AsrResult", "Whisper", "detect_audio_language", "load_whisper",
           "transcribe_stretches"]  # fmt: skip
