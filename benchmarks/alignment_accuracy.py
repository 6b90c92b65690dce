"""Word alignment and speech-mask accuracy against known truth, in the seven languages, under noise and music.

Each utterance is built word by word: espeak-ng speaks every word on its own with a *different* voice variant,
speed and pitch than the aligner's synthesis uses, the words are joined with random pauses (50-600 ms), and
white noise or synthetic music (chords plus a melody in the voice's range) is mixed in at a random 10-20 dB SNR.
The truth is where each word was put.

Reported per language and method: mean, median and 90th-percentile word-boundary error (start and end of
every word, ms). Methods: ``dtw`` (hhtune.speech.align, model-free), ``proportional`` (the old estimate: words
spread over the detected speech in proportion to their phoneme counts), and ``ctc`` when ``--acoustic-model``
names a wav2vec2 phoneme model. Speech-mask F1 per 40 ms frame against the true word spans, per background,
for the mask sources: DTW phonemes, Silero VAD, energy, and the phonemes kept where Silero hears speech
(within 80 ms), which is what data_prep uses when the alignment is real.

    python benchmarks/alignment_accuracy.py [--utterances 2] [--seed 0] [--acoustic-model DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
from pathlib import Path

import librosa
import numpy as np
import soundfile

from hhtune.contract import SPEECH_SAMPLE_RATE
from hhtune.speech.align import Alignment, Interval, PhonemeRecognizer, align, align_dtw
from hhtune.speech.g2p import WordPhonemes, phonemize
from hhtune.speech.vad import energy_activity, silero_activity, speech_near

RATE = SPEECH_SAMPLE_RATE
HOP = 0.04
TEXTS = {
    "en": "Our new spring collection arrives in stores this week with bright colours and light fabrics",
    "de": "Unsere neue Frühjahrskollektion kommt diese Woche mit hellen Farben in die Geschäfte",
    "fr": "Notre nouvelle collection de printemps arrive cette semaine avec des couleurs vives",
    "ko": "새로운 봄 컬렉션이 이번 주에 밝은 색상과 가벼운 소재로 매장에 도착합니다",
    "zh": "我们的春季新品本周上市，色彩明亮，面料轻盈",
    "yue": "我哋嘅春季新系列今個星期上架，顏色鮮明，布料輕身",
    "ja": "新しい春のコレクションが今週、明るい色と軽い素材で店頭に並びます",
}
TRUTH_VARIANT = "+f3"  # the truth is spoken by another voice variant than the aligner's synthesis uses


def _speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    out = subprocess.run(["espeak-ng", "-v", voice + TRUTH_VARIANT, "-s", str(speed), "-p", str(pitch), "--stdout",
                          text], capture_output=True, check=True).stdout  # fmt: skip
    wave, rate = soundfile.read(io.BytesIO(out), dtype="float32")
    wave = librosa.resample(wave, orig_sr=rate, target_sr=RATE)
    idx = np.flatnonzero(np.abs(wave) > 0.02 * np.abs(wave).max())
    return wave[idx[0] : idx[-1] + 1] if len(idx) else wave


def _music(n: int, rng: np.random.Generator) -> np.ndarray:
    """Chords (three notes with harmonics) changing every half second, and a melody at 200-800 Hz."""
    t = np.arange(n) / RATE
    out = np.zeros(n, dtype=np.float64)
    for k in range(int(np.ceil(n / RATE * 2))):
        a, b = int(k * RATE / 2), min(n, int((k + 1) * RATE / 2))
        root = 110 * 2 ** (rng.integers(0, 12) / 12)
        for ratio in (1, 5 / 4, 3 / 2):
            for h in (1, 2, 3):
                out[a:b] += np.sin(2 * np.pi * root * ratio * h * t[a:b]) / h
        note = 200 * 2 ** (rng.integers(0, 24) / 12)
        env = np.exp(-3 * (t[a:b] - t[a]))
        out[a:b] += 1.5 * env * np.sin(2 * np.pi * note * t[a:b])
    return out.astype(np.float32)


def utterance(words: list[WordPhonemes], background: str, rng: np.random.Generator):
    """``(audio, [(start, end)] per word, snr_db)``."""
    speed, pitch = int(rng.integers(140, 190)), int(rng.integers(30, 70))
    pieces, truth, t = [np.zeros(int(rng.uniform(0.3, 0.6) * RATE), np.float32)], [], 0.0
    t = len(pieces[0]) / RATE
    for w in words:
        wave = _speak(w.speak or w.word, w.voice, speed, pitch)
        truth.append((t, t + len(wave) / RATE))
        gap = np.zeros(int(rng.uniform(0.05, 0.6) * RATE), np.float32)
        pieces += [wave, gap]
        t += (len(wave) + len(gap)) / RATE
    pieces.append(np.zeros(int(0.4 * RATE), np.float32))
    speech = np.concatenate(pieces)
    noise = rng.standard_normal(len(speech)).astype(np.float32) if background == "noise" else _music(len(speech), rng)
    snr = float(rng.uniform(10, 20))
    p_speech = np.mean(speech[np.abs(speech) > 0] ** 2)
    noise *= np.sqrt(p_speech / np.mean(noise**2) / 10 ** (snr / 10))
    return speech + noise, truth, snr


def proportional(audio: np.ndarray, words: list[WordPhonemes]) -> Alignment:
    """The old estimate: the detected speech shared out in proportion to phoneme counts."""
    active = energy_activity(audio, RATE, 0.02)
    times = np.flatnonzero(active) * 0.02
    if not len(times):
        return Alignment("proportional")
    share = np.arange(1, len(times) + 1) / len(times)
    weights = np.array([max(1, len(w.phonemes)) for w in words], dtype=float)
    edges = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
    at = lambda s: float(times[min(len(times) - 1, int(np.searchsorted(share, s)))])
    return Alignment("proportional",
                     [Interval(at(a), at(b) + 0.02, w.word) for w, a, b in zip(words, edges[:-1], edges[1:])])


def _frames(spans: list[tuple[float, float]], n: int) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    for a, b in spans:
        m[int(a / HOP) : int(np.ceil(b / HOP))] = True
    return m


def _f1(pred: np.ndarray, true: np.ndarray) -> float:
    tp = float((pred & true).sum())
    return 2 * tp / max(1.0, float(pred.sum() + true.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=2, help="per language and background")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--acoustic-model", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    rec = PhonemeRecognizer(args.acoustic_model) if args.acoustic_model else None
    errors: dict[tuple[str, str], list[float]] = {}
    masks: dict[tuple[str, str], list[float]] = {}
    for language, text in TEXTS.items():
        words = phonemize(text, language)
        for background in ("noise", "music"):
            for _ in range(args.utterances):
                audio, truth, _ = utterance(words, background, rng)
                results = {"dtw": align_dtw(audio, words), "proportional": proportional(audio, words)}
                if rec is not None:
                    results["ctc"] = align(audio, words, rec)
                for method, a in results.items():
                    got = {w.label: (w.start, w.end) for w in a.words}
                    for w, (ts, te) in zip(words, truth):
                        s, e = got.get(w.word, (np.nan, np.nan))
                        errors.setdefault((language, method), []).extend([abs(s - ts) * 1000, abs(e - te) * 1000])
                n = int(len(audio) / RATE / HOP)
                true = _frames(truth, n)
                dtw = results["dtw"]
                silero = silero_activity(audio, HOP)[:n]
                phones = _frames([(p.start, p.end) for p in dtw.phonemes], n)
                sources = {"phonemes (dtw)": phones, "silero": silero, "energy": energy_activity(audio, RATE, HOP)[:n],
                           "phonemes & silero": phones & speech_near(np.pad(silero, (0, n - len(silero))), 2),
                           }  # fmt: skip
                for name, pred in sources.items():
                    pred = np.pad(pred, (0, n - len(pred)))
                    masks.setdefault((background, name), []).append(_f1(pred, true))
        print(f"{language}: done", flush=True)
    rows = []
    print(f"\n{'language':8} {'method':13} {'mean ms':>8} {'median':>7} {'p90':>7} {'words':>6}")
    for (language, method), e in sorted(errors.items()):
        x = np.array(e)
        x = np.where(np.isnan(x), 1000.0, x)  # a word the method lost counts as 1 s off
        row = {"language": language, "method": method, "mean_ms": round(float(x.mean()), 1),
               "median_ms": round(float(np.median(x)), 1), "p90_ms": round(float(np.percentile(x, 90)), 1),
               "boundaries": len(x)}  # fmt: skip
        rows.append(row)
        print(f"{language:8} {method:13} {row['mean_ms']:8.1f} {row['median_ms']:7.1f} {row['p90_ms']:7.1f} "
              f"{len(x) // 2:6d}")
    print(f"\n{'background':10} {'mask source':16} {'F1':>5}")
    mask_rows = []
    for (background, name), f in sorted(masks.items()):
        mask_rows.append({"background": background, "source": name, "f1": round(float(np.mean(f)), 3)})
        print(f"{background:10} {name:16} {np.mean(f):5.3f}")
    if args.json:
        args.json.write_text(json.dumps({"boundaries": rows, "masks": mask_rows}, indent=2))


if __name__ == "__main__":
    main()
