"""Forced alignment of words and phonemes to speech.

With a phoneme CTC acoustic model on disk (a wav2vec2 espeak-phoneme model through
transformers), phonemes are aligned by CTC Viterbi over its emissions. Without one,
the fallback is labelled ``method="rough"``: speech-activity detection plus durations
proportional to phoneme counts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .g2p import WordPhonemes


@dataclass
class Interval:
    """A labelled span of time, in seconds."""

    start: float
    end: float
    label: str
    confidence: float = 1.0


@dataclass
class Alignment:
    """Word and phoneme intervals of a clip and how they were found."""

    method: str = "none"  # ctc | rough | none
    words: list[Interval] = field(default_factory=list)
    phonemes: list[Interval] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"method": self.method, "words": [asdict(w) for w in self.words],
                           "phonemes": [asdict(p) for p in self.phonemes]}, ensure_ascii=False)  # fmt: skip

    @classmethod
    def from_json(cls, s: str) -> "Alignment":
        d = json.loads(s)
        return cls(d["method"], [Interval(**w) for w in d["words"]], [Interval(**p) for p in d["phonemes"]])

    def shifted(self, offset: float, start: float, end: float) -> "Alignment":
        """Intervals inside ``[start, end)``, moved by ``offset`` (for cutting a clip out of a longer file)."""
        keep = lambda xs: [Interval(i.start + offset, i.end + offset, i.label, i.confidence)  # noqa: E731
                           for i in xs if i.start >= start - 1e-6 and i.end <= end + 1e-6]  # fmt: skip
        return Alignment(self.method, keep(self.words), keep(self.phonemes))

    @property
    def mean_confidence(self) -> float:
        return float(np.mean([w.confidence for w in self.words])) if self.words else 0.0


def speech_activity(audio: np.ndarray, sample_rate: int, hop_s: float = 0.04) -> np.ndarray:
    """Boolean speech activity per hop from frame energy against an adaptive noise floor.

    The threshold sits between the 10th-percentile (noise floor) and the 95th-percentile
    energy, at least 18 dB above the floor; short gaps (< 0.2 s) are bridged.
    """
    hop = max(1, int(round(hop_s * sample_rate)))
    n = len(audio) // hop
    if n == 0:
        return np.zeros(0, dtype=bool)
    frames = audio[: n * hop].reshape(n, hop).astype(np.float64)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    floor, peak = np.percentile(db, 10), np.percentile(db, 95)
    if peak - floor < 12:  # no loud part at all: silence or stationary noise
        return np.zeros(n, dtype=bool)
    active = db > max(floor + 18, (floor + peak) / 2 - 6)
    gap = int(0.2 / hop_s)
    idx = np.flatnonzero(active)
    for a, b in zip(idx[:-1], idx[1:]):
        if 1 < b - a <= gap:
            active[a:b] = True
    return active


def viterbi_align(log_probs: np.ndarray, tokens: list[int], blank: int = 0) -> list[tuple[int, int, int, float]]:
    """CTC forced alignment: the best path of ``tokens`` through ``log_probs [frames, vocab]``.

    Returns ``(token_index, start_frame, end_frame_exclusive, confidence)`` per token,
    the confidence being the mean posterior of the token on its frames.
    """
    frames = log_probs.shape[0]
    states = [blank]
    for t in tokens:
        states += [t, blank]
    s = len(states)
    need = len(tokens) + sum(1 for a, b in zip(tokens, tokens[1:]) if a == b)
    if frames < need:
        raise ValueError(f"{frames} frames cannot hold {len(tokens)} tokens (need at least {need})")
    score = np.full((frames, s), -np.inf)
    back = np.zeros((frames, s), dtype=np.int64)
    score[0, 0] = log_probs[0, states[0]]
    if s > 1:
        score[0, 1] = log_probs[0, states[1]]
    for t in range(1, frames):
        for j in range(s):
            cands = [(score[t - 1, j], j)]
            if j >= 1:
                cands.append((score[t - 1, j - 1], j - 1))
            if j >= 2 and states[j] != blank and states[j] != states[j - 2]:
                cands.append((score[t - 1, j - 2], j - 2))
            best, arg = max(cands)
            score[t, j] = best + log_probs[t, states[j]]
            back[t, j] = arg
    j = s - 1 if s == 1 or score[-1, s - 1] >= score[-1, s - 2] else s - 2
    path = [j]
    for t in range(frames - 1, 0, -1):
        j = back[t, j]
        path.append(j)
    path.reverse()
    spans: dict[int, list[int]] = {}
    for t, j in enumerate(path):
        if j % 2 == 1:
            spans.setdefault(j // 2, []).append(t)
    out = []
    for k in range(len(tokens)):
        fr = spans[k]
        conf = float(np.exp(log_probs[fr, tokens[k]]).mean())
        out.append((k, fr[0], fr[-1] + 1, conf))
    return out


class PhonemeRecognizer:
    """A wav2vec2-style phoneme CTC model from a local folder (``Wav2Vec2ForCTC`` + processor)."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

        import json as _json

        path = Path(path)
        if not (path / "config.json").is_file() or not (path / "vocab.json").is_file():
            raise ValueError(f"acoustic model not found at {path}: expected config.json and vocab.json (Wav2Vec2ForCTC)")
        self.model = Wav2Vec2ForCTC.from_pretrained(path).to(device).eval()
        self.features = Wav2Vec2FeatureExtractor.from_pretrained(path)
        self.vocab: dict[str, int] = _json.loads((path / "vocab.json").read_text())
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.blank = self.model.config.pad_token_id
        self.device = device

    def emissions(self, audio_16k: np.ndarray) -> tuple[np.ndarray, float]:
        """Log-probabilities ``[frames, vocab]`` and the seconds per frame."""
        import torch

        inputs = self.features(audio_16k, sampling_rate=16000, return_tensors="pt").input_values.to(self.device)
        with torch.no_grad():
            logits = self.model(inputs).logits[0].float()
        lp = torch.log_softmax(logits, dim=-1).cpu().numpy()
        return lp, len(audio_16k) / 16000 / max(1, lp.shape[0])

    def transcribe(self, audio_16k: np.ndarray) -> list[str]:
        """Greedy CTC phoneme decoding."""
        lp, _ = self.emissions(audio_16k)
        best = lp.argmax(axis=1)
        out, prev = [], None
        for i in best:
            if i != prev and i != self.blank:
                out.append(self.id_to_token[int(i)])
            prev = i
        return out

    def token_ids(self, phonemes: list[str]) -> list[int | None]:
        """Vocabulary ids of phonemes; a phoneme not in the vocabulary is tried without tone digits and
        length marks, then character by character (first character kept), else ``None``."""
        ids: list[int | None] = []
        for p in phonemes:
            for cand in (p, p.rstrip("0123456789ː"), p[:1]):
                if cand in self.vocab:
                    ids.append(self.vocab[cand])
                    break
            else:
                ids.append(None)
        return ids


def align(audio_16k: np.ndarray, words: list[WordPhonemes], recognizer: PhonemeRecognizer | None = None) -> Alignment:
    """Word and phoneme intervals of ``words`` in ``audio_16k`` (CTC with a recognizer, else rough)."""
    if not words:
        return Alignment("none")
    if recognizer is not None:
        try:
            return _align_ctc(audio_16k, words, recognizer)
        except ValueError:
            pass  # too short for CTC or nothing mappable: fall back, and the method says so
    return _align_rough(audio_16k, words)


def _align_ctc(audio_16k: np.ndarray, words: list[WordPhonemes], rec: PhonemeRecognizer) -> Alignment:
    lp, sec = rec.emissions(audio_16k)
    flat: list[tuple[int, str, int]] = []  # (word index, phoneme, token id)
    for wi, w in enumerate(words):
        for p, tid in zip(w.phonemes, rec.token_ids(w.phonemes)):
            if tid is not None:
                flat.append((wi, p, tid))
    if not flat:
        raise ValueError("no phoneme maps to the acoustic model's vocabulary")
    spans = viterbi_align(lp, [t for _, _, t in flat], blank=rec.blank)
    phonemes = [Interval(a * sec, b * sec, flat[k][1], c) for k, a, b, c in spans]
    word_iv = []
    for wi, w in enumerate(words):
        mine = [phonemes[k] for k, (i, _, _) in enumerate(flat) if i == wi]
        if mine:
            word_iv.append(Interval(mine[0].start, mine[-1].end, w.word, float(np.mean([m.confidence for m in mine]))))
    return Alignment("ctc", word_iv, phonemes)


def _align_rough(audio_16k: np.ndarray, words: list[WordPhonemes]) -> Alignment:
    hop = 0.02
    active = speech_activity(audio_16k, 16000, hop)
    if not active.any():
        return Alignment("rough")
    times = np.flatnonzero(active) * hop
    cumulative = np.arange(1, len(times) + 1) / len(times)  # share of speech time elapsed
    weights = np.array([max(1, len(w.phonemes)) for w in words], dtype=np.float64)
    edges = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])

    def at(share: float) -> float:
        i = min(len(times) - 1, int(np.searchsorted(cumulative, share, side="left")))
        return float(times[i] + (hop if share >= 1.0 else 0.0))

    word_iv, phone_iv = [], []
    for w, a, b in zip(words, edges[:-1], edges[1:]):
        start, end = at(a), max(at(b), at(a) + hop)
        word_iv.append(Interval(start, end, w.word, 0.5))
        n = max(1, len(w.phonemes))
        for k, p in enumerate(w.phonemes):
            phone_iv.append(Interval(start + (end - start) * k / n, start + (end - start) * (k + 1) / n, p, 0.5))
    return Alignment("rough", word_iv, phone_iv)


def build_tiny_recognizer(out_dir: str | Path, seed: int = 0) -> Path:
    """A random-weight tiny ``Wav2Vec2ForCTC`` with an IPA phoneme vocabulary, saved locally (tests, quick start)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    symbols = sorted(set("aeiouyæɐɑɒɔəɛɜɪʊʌøœɯɨbdfghjklmnpqrstvwxzçðŋɡɲɾʁʃʒθχʔ") | {"N", "U", "I"})
    vocab = {"<pad>": 0, "<unk>": 1, **{s: i + 2 for i, s in enumerate(symbols)}}
    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, conv_dim=(16, 16, 16, 16, 16, 16, 16), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2, pad_token_id=0, do_stable_layer_norm=True,
                         feat_extract_norm="layer")  # fmt: skip
    model = Wav2Vec2ForCTC(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True).save_pretrained(out)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    return out
