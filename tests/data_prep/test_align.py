"""CTC Viterbi against hand-built emissions, speech activity, and both alignment paths (CTC, model-free DTW)
on real speech."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from hhtune.speech.align import PhonemeRecognizer, align, build_tiny_recognizer, viterbi_align
from hhtune.speech.g2p import phonemize
from hhtune.speech.vad import energy_activity, silero_activity


def _emissions(best: list[int], vocab: int = 4, sharp: float = 0.9) -> np.ndarray:
    lp = np.full((len(best), vocab), (1 - sharp) / (vocab - 1))
    lp[np.arange(len(best)), best] = sharp
    return np.log(lp)


def test_viterbi_finds_the_known_path():
    # frames: blank a a blank b b b blank  -> a on frames 1-2, b on 4-6
    lp = _emissions([0, 1, 1, 0, 2, 2, 2, 0])
    spans = viterbi_align(lp, [1, 2])
    assert [(k, a, b) for k, a, b, _ in spans] == [(0, 1, 3), (1, 4, 7)]
    assert all(c == pytest.approx(0.9) for *_, c in spans)


def test_forced_alignment_differs_from_greedy_decoding():
    # greedy would read "a b a", but we force the transcript "a a": a blank must separate them
    lp = _emissions([1, 1, 2, 1, 1])
    spans = viterbi_align(lp, [1, 1])
    (_k0, a0, b0, _), (_k1, a1, b1, _) = spans
    assert b0 <= a1 - 1 and a0 == 0 and b1 == 5  # a gap frame (blank) between the two a's


def test_viterbi_needs_enough_frames():
    # "a a" needs a blank between the two a's: 3 frames at least
    with pytest.raises(ValueError, match=r"^2 frames cannot hold 2 tokens \(need at least 3\)$"):
        viterbi_align(_emissions([1, 1]), [1, 1])
    assert len(viterbi_align(_emissions([1, 0, 1]), [1, 1])) == 2


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    wav = tmp_path_factory.mktemp("speech") / "s.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), "hello brave new world"], check=True)
    import librosa

    audio, _ = librosa.load(wav, sr=16000)
    silence = np.zeros(16000, dtype=np.float32)
    return np.concatenate([silence, audio, silence])


@pytest.mark.parametrize("detector", ["energy", "silero"])
def test_speech_activity_finds_the_speech(speech, detector):
    if detector == "energy":
        active = energy_activity(speech, 16000, 0.04)
    else:
        active = silero_activity(speech, 0.04)
    t = np.flatnonzero(active) * 0.04
    end = len(speech) / 16000
    assert 0.9 < t[0] < 1.2 and end - 1.6 < t[-1] < end - 0.9  # espeak adds ~0.3 s of its own trailing silence
    assert not energy_activity(np.zeros(32000, dtype=np.float32), 16000).any()
    assert not silero_activity(np.zeros(32000, dtype=np.float32)).any()


def test_dtw_alignment_is_ordered_inside_speech_with_measured_confidence(speech):
    words = phonemize("hello brave new world", "en")
    a = align(speech, words)
    assert a.method == "dtw" and [w.label for w in a.words] == ["hello", "brave", "new", "world"]
    assert a.words[0].start >= 0.85 and a.words[-1].end <= len(speech) / 16000 - 0.8
    for x, y in zip(a.words, a.words[1:]):
        assert x.end <= y.start + 1e-9
    # the confidence is measured: the right words score higher than words never said
    wrong = align(speech, phonemize("seven yellow fish jumped", "en"))
    assert a.mean_confidence > wrong.mean_confidence + 0.02, (a.mean_confidence, wrong.mean_confidence)
    assert len({w.confidence for w in a.words}) > 1


def test_ctc_alignment_with_a_local_recognizer(speech, tmp_path):
    rec = PhonemeRecognizer(build_tiny_recognizer(tmp_path / "rec"))
    words = phonemize("hello brave new world", "en")
    a = align(speech, words, rec)
    assert a.method == "ctc" and [w.label for w in a.words] == ["hello", "brave", "new", "world"]
    for x, y in zip(a.phonemes, a.phonemes[1:]):
        assert x.end <= y.start + 1e-9
    assert all(0 <= p.confidence <= 1 for p in a.phonemes)
    assert isinstance(rec.transcribe(speech[:16000]), list)


def test_ctc_falls_back_to_dtw_with_a_note(speech, tmp_path):
    rec = PhonemeRecognizer(build_tiny_recognizer(tmp_path / "rec"))
    a = align(speech[:1600], phonemize("hello brave new world " * 3, "en"), rec)  # 0.1 s cannot hold 30+ phonemes
    assert a.method == "dtw" and a.notes and "CTC alignment failed" in a.notes[0] and "frames cannot hold" in a.notes[0]


def test_recognizer_path_must_exist(tmp_path):
    with pytest.raises(ValueError, match="acoustic model not found"):
        PhonemeRecognizer(tmp_path)
