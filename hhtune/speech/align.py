"""Forced alignment of words and phonemes to speech, with a measured confidence per word.

Two methods, and every result says which one made it (``Alignment.method``):

* ``ctc``: with a phoneme CTC acoustic model on disk (a wav2vec2 espeak-phoneme model through transformers),
  phonemes are placed by CTC Viterbi over its emissions; confidence = mean posterior of each phoneme.
* ``dtw`` (model-free, the aeneas method): espeak-ng speaks each word (``WordPhonemes.speak`` in its
  ``voice``), the words are joined with short silences, and dynamic time warping
  (``librosa.sequence.dtw``) over normalised MFCCs of the synthesis and of the real audio maps every
  synthetic frame onto the real time line. Word and phoneme edges follow the path; confidence =
  ``exp(-mean local path cost / sqrt(dims))`` on the word's frames, so a word spoken unlike its
  synthesis scores low. Works for every language espeak-ng speaks (en, cmn, yue, ja, ko, de, fr).

``aeneas-ng`` (pip) was checked and not used: 1.7.4.0 ships only a source archive whose C extensions
(its espeak-ng wrapper ``cew``, MFCC and DTW) must be compiled against the ``libespeak-ng-dev`` headers
(absent here, and another apt package for every user), it reads audio through ffmpeg/ffprobe subprocesses
on files, and it aligns whole text fragments. ``librosa.sequence.dtw`` (numba-compiled) over librosa MFCCs,
with one espeak-ng call per distinct word, is the same method on libraries this project already has.

When CTC is configured but cannot run on a piece of audio, the fallback to ``dtw`` is recorded in
``Alignment.notes`` (shown in the report), never silent.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import math
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import librosa
import numpy as np
import soundfile

from ..contract import SPEECH_SAMPLE_RATE
from .g2p import WordPhonemes

HOP_S = 0.01  # feature hop of the DTW aligner
_GAP_S = 0.08  # silence put between synthesised words (absorbs the real pauses)
_N_MFCC = 13


@dataclass
class Interval:
    """A labelled span of time, in seconds."""

    start: float
    end: float
    label: str
    confidence: float = 1.0


@dataclass
class Alignment:
    """Word and phoneme intervals of a clip, how they were found, and what went wrong on the way."""

    method: str = "none"  # ctc | dtw | none
    words: list[Interval] = field(default_factory=list)
    phonemes: list[Interval] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"method": self.method, "words": [asdict(w) for w in self.words],
                           "phonemes": [asdict(p) for p in self.phonemes], "notes": self.notes},
                          ensure_ascii=False)  # fmt: skip

    @classmethod
    def from_json(cls, s: str) -> Alignment:
        d = json.loads(s)
        iv = lambda xs: [Interval(float(x["start"]), float(x["end"]), str(x["label"]),
                                  float(x.get("confidence", 1.0))) for x in xs]  # fmt: skip
        return cls(d.get("method", "none"), iv(d.get("words", [])), iv(d.get("phonemes", [])), list(d.get("notes", [])))

    @property
    def mean_confidence(self) -> float:
        return float(np.mean([w.confidence for w in self.words])) if self.words else 0.0


def viterbi_align(log_probs: np.ndarray, tokens: list[int], blank: int = 0) -> list[tuple[int, int, int, float]]:
    """CTC forced alignment: the best path of ``tokens`` through ``log_probs [frames, vocab]``.

    Returns ``(token_index, start_frame, end_frame_exclusive, confidence)`` per token, the confidence being
    the mean posterior of the token on its frames. The recursion runs over frames with every state of a
    frame updated at once in numpy (stay, advance by one, skip a blank), so the cost per frame is a few
    array operations, not a Python loop over states.
    """
    frames = log_probs.shape[0]
    states = np.full(2 * len(tokens) + 1, blank, dtype=np.int64)
    states[1::2] = tokens
    s = len(states)
    need = len(tokens) + sum(1 for a, b in itertools.pairwise(tokens) if a == b)
    if frames < need:
        raise ValueError(f"{frames} frames cannot hold {len(tokens)} tokens (need at least {need})")
    can_skip = np.zeros(s, dtype=bool)
    can_skip[2:] = (states[2:] != blank) & (states[2:] != states[:-2])
    emit = log_probs[:, states]  # [frames, states]
    score = np.full(s, -np.inf)
    score[0] = emit[0, 0]
    if s > 1:
        score[1] = emit[0, 1]
    back = np.zeros((frames, s), dtype=np.int8)  # 0 stay, 1 from j-1, 2 from j-2
    for t in range(1, frames):
        one = np.concatenate([[-np.inf], score[:-1]])
        two = np.where(can_skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        cands = np.stack([score, one, two])
        back[t] = cands.argmax(axis=0)
        score = cands.max(axis=0) + emit[t]
    j = s - 1 if s == 1 or score[s - 1] >= score[s - 2] else s - 2
    path = np.empty(frames, dtype=np.int64)
    for t in range(frames - 1, -1, -1):  # backtracking: integer steps only
        path[t] = j
        j -= int(back[t, j])
    out = []
    for k in range(len(tokens)):
        fr = np.flatnonzero(path == 2 * k + 1)
        conf = float(np.exp(log_probs[fr, tokens[k]]).mean())
        out.append((k, int(fr[0]), int(fr[-1]) + 1, conf))
    return out


class PhonemeRecognizer:
    """A wav2vec2-style phoneme CTC model from a local folder (``Wav2Vec2ForCTC`` + processor)."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC  # noqa: PLC0415 -- heavy: transformers loads in ~1 s, only the phoneme model needs it

        path = Path(path)
        if not (path / "config.json").is_file() or not (path / "vocab.json").is_file():
            raise ValueError(f"acoustic model not found at {path}: expected config.json "
                             "and vocab.json (Wav2Vec2ForCTC)")
        self.model = Wav2Vec2ForCTC.from_pretrained(path).to(device).eval()
        self.features = Wav2Vec2FeatureExtractor.from_pretrained(path)
        self.vocab: dict[str, int] = json.loads((path / "vocab.json").read_text())
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.blank = self.model.config.pad_token_id
        self.device = device

    def emissions(self, audio_16k: np.ndarray) -> tuple[np.ndarray, float]:
        """Log-probabilities ``[frames, vocab]`` and the seconds per frame."""
        import torch  # noqa: PLC0415 -- heavy: torch loads in seconds; data_prep's alignment without a model does not need it

        inputs = self.features(audio_16k, sampling_rate=SPEECH_SAMPLE_RATE, return_tensors="pt").input_values
        inputs = inputs.to(self.device)
        with torch.no_grad():
            logits = self.model(inputs).logits[0].float()
        lp = torch.log_softmax(logits, dim=-1).cpu().numpy()
        return lp, len(audio_16k) / SPEECH_SAMPLE_RATE / max(1, lp.shape[0])

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
    """Word and phoneme intervals of ``words`` in ``audio_16k``: CTC with a recognizer, else (or when CTC cannot
    run on this audio, with a note saying why) model-free DTW against an espeak-ng synthesis."""
    if not words:
        return Alignment("none")
    notes = []
    if recognizer is not None:
        try:
            return _align_ctc(audio_16k, words, recognizer)
        except ValueError as e:
            notes.append(f"CTC alignment failed ({e}); fell back to model-free DTW")
    out = align_dtw(audio_16k, words)
    out.notes = notes + out.notes
    return out


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


def _espeak(text: str, voice: str, word_gap: int = 0) -> np.ndarray:
    """espeak-ng speaking ``text`` with ``voice`` (``word_gap``: extra pause between words, 10 ms units): 16 kHz."""
    cmd = ["espeak-ng", "-v", voice, *(["-g", str(word_gap)] if word_gap else []), "--stdout", text]
    try:
        res = subprocess.run(cmd, capture_output=True, check=True)
    except FileNotFoundError as e:
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng") from e
    except subprocess.CalledProcessError as e:
        raise ValueError(f"espeak-ng could not speak {text!r} with voice {voice!r}: {e.stderr.decode()[-200:]}") from e
    data, rate = soundfile.read(io.BytesIO(res.stdout), dtype="float32")
    return librosa.resample(data, orig_sr=rate, target_sr=SPEECH_SAMPLE_RATE, res_type="soxr_hq").astype(np.float32)


def _trim(wave: np.ndarray) -> np.ndarray:
    if wave.size and np.abs(wave).max() > 0:
        wave, _ = librosa.effects.trim(wave, top_db=40, frame_length=400, hop_length=80)
    return wave


@functools.lru_cache(maxsize=4096)
def synthesize(text: str, voice: str) -> np.ndarray:
    """espeak-ng speaking ``text`` with ``voice``: 16 kHz mono float32, leading and trailing silence trimmed."""
    return _trim(_espeak(text, voice))


_SPLIT_GAP_S = 0.25  # a silence this long in a synthesis made with word_gap=40 is a word boundary


def _split_at_gaps(wave: np.ndarray, count: int) -> list[np.ndarray] | None:
    """``count`` words out of a synthesis with long pauses between words, or ``None`` if the pauses do not
    number ``count - 1`` (a word with a pause of its own, or words espeak-ng merged)."""
    hop = int(0.01 * SPEECH_SAMPLE_RATE)
    n = len(wave) // hop
    if n == 0:
        return None
    level = np.sqrt(np.mean(wave[: n * hop].reshape(n, hop) ** 2, axis=1))
    loud = level >= 0.01 * level.max()
    idx = np.flatnonzero(loud)
    if not len(idx):
        return None
    first, last = idx[0], idx[-1] + 1
    cuts, start = [], None
    for k in range(first, last + 1):
        q = k < last and not loud[k]
        if q and start is None:
            start = k
        elif not q and start is not None:
            if k - start >= _SPLIT_GAP_S / 0.01:
                cuts.append((start, k))
            start = None
    if len(cuts) != count - 1:
        return None
    edges = [first] + [c for ab in cuts for c in ab] + [last]
    return [_trim(wave[a * hop : b * hop]) for a, b in zip(edges[::2], edges[1::2])]


def synthesize_words(words: list[WordPhonemes]) -> list[np.ndarray]:
    """One synthesis per word. Each run of words in one voice is spoken in one espeak-ng call with long pauses
    between words and cut at those pauses (one process start instead of one per word); a run that does not cut
    cleanly is split in halves and tried again, down to single words."""
    out: list[np.ndarray] = []
    k = 0
    while k < len(words):
        j = k
        while j + 1 < len(words) and words[j + 1].voice == words[k].voice:
            j += 1
        out += _synth_run(words[k : j + 1])
        k = j + 1
    return out


def _synth_run(group: list[WordPhonemes]) -> list[np.ndarray]:
    if len(group) == 1:
        return [synthesize(group[0].speak or group[0].word, group[0].voice)]
    texts = [(w.speak or w.word).replace(" ", "") if w.voice.startswith("cmn") else (w.speak or w.word) for w in group]
    pieces = _split_at_gaps(_espeak(" ".join(texts), group[0].voice, word_gap=40), len(group))
    if pieces is not None:
        return pieces
    half = len(group) // 2
    return _synth_run(group[:half]) + _synth_run(group[half:])


def _features(wave: np.ndarray) -> np.ndarray:
    """Per-signal normalised MFCCs ``[frames, 13]`` at :data:`HOP_S` (energy included, as c0)."""
    hop = int(HOP_S * SPEECH_SAMPLE_RATE)
    m = librosa.feature.mfcc(y=wave, sr=SPEECH_SAMPLE_RATE, n_mfcc=_N_MFCC, n_fft=512, hop_length=hop, n_mels=40).T
    return (m - m.mean(axis=0)) / (m.std(axis=0) + 1e-6)


def align_dtw(audio_16k: np.ndarray, words: list[WordPhonemes]) -> Alignment:
    """Model-free alignment: DTW between the real audio and an espeak-ng synthesis of the same words."""
    from scipy.spatial.distance import cdist  # noqa: PLC0415 -- heavy: scipy.spatial loads in ~1 s, only DTW alignment needs it

    if len(audio_16k) < int(0.1 * SPEECH_SAMPLE_RATE):
        return Alignment("none", notes=["audio too short to align"])
    waves = synthesize_words(words)
    gap = np.zeros(int(_GAP_S * SPEECH_SAMPLE_RATE), dtype=np.float32)
    pieces, spans, t = [gap], [], len(gap)
    for w in waves:
        spans.append((t, t + len(w)))
        pieces += [w, gap]
        t += len(w) + len(gap)
    synth = np.concatenate(pieces)
    synth = synth + np.random.default_rng(0).normal(0, 1e-4, synth.shape).astype(np.float32)  # no log(0) in silence
    real, fake = _features(audio_16k.astype(np.float32)), _features(synth)
    cost = cdist(real, fake, metric="euclidean")
    _, path = librosa.sequence.dtw(C=cost, backtrack=True)
    path = path[::-1]  # (real frame, synthetic frame) pairs in time order
    hop = int(HOP_S * SPEECH_SAMPLE_RATE)
    lo = np.full(len(fake), len(real), dtype=np.int64)  # first and last real frame mapped to each synthetic frame
    hi = np.full(len(fake), -1, dtype=np.int64)
    np.minimum.at(lo, path[:, 1], path[:, 0])
    np.maximum.at(hi, path[:, 1], path[:, 0])
    step_cost = cost[path[:, 0], path[:, 1]]
    scale = math.sqrt(_N_MFCC)
    word_iv, phone_iv = [], []
    for w, (a, b) in zip(words, spans):
        fa, fb = a // hop, max(a // hop + 1, min(len(fake), -(-b // hop)))
        start, end = lo[fa] * HOP_S, (hi[fb - 1] + 1) * HOP_S
        on = (path[:, 1] >= fa) & (path[:, 1] < fb)
        conf = float(np.exp(-step_cost[on].mean() / scale)) if on.any() else 0.0
        word_iv.append(Interval(round(start, 4), round(max(end, start + HOP_S), 4), w.word, round(conf, 4)))
        n = max(1, len(w.phonemes))
        edges = [fa + (fb - fa) * k / n for k in range(n + 1)]  # phonemes share the synthetic word evenly
        for k, p in enumerate(w.phonemes):
            pa, pb = int(edges[k]), max(int(edges[k]) + 1, int(edges[k + 1]))
            ps, pe = lo[min(pa, len(fake) - 1)] * HOP_S, (hi[min(pb, len(fake)) - 1] + 1) * HOP_S
            phone_iv.append(Interval(round(ps, 4), round(max(pe, ps + HOP_S), 4), p, round(conf, 4)))
    return Alignment("dtw", word_iv, phone_iv)


def build_tiny_recognizer(out_dir: str | Path, seed: int = 0) -> Path:
    """A random-weight tiny ``Wav2Vec2ForCTC`` with an IPA phoneme vocabulary, saved locally (tests, quick start)."""
    import torch  # noqa: PLC0415 -- heavy: torch loads in seconds; data_prep's alignment without a model does not need it
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC  # noqa: PLC0415 -- heavy: transformers loads in ~1 s, only the tiny recognizer needs it

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
    features = Wav2Vec2FeatureExtractor(sampling_rate=SPEECH_SAMPLE_RATE, do_normalize=True, return_attention_mask=True)
    features.save_pretrained(out)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    return out
