"""Voice identity and speech quality on speech with a known answer: espeak-ng voices, clean and damaged."""

from __future__ import annotations

import subprocess

import librosa
import numpy as np
import pytest
import soundfile as sf

from hhtune.evaluation.clips import AVClip
from hhtune.evaluation.metrics import speech_quality, voice_similarity

TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags, and we will go meet her on Wednesday.",
]


def _speech(tmp_path, voice: str, text: str) -> AVClip:
    wav = tmp_path / f"{voice}_{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True)
    audio, rate = sf.read(wav, dtype="float32")
    return AVClip(frames=np.zeros((1, 8, 8, 3), np.uint8), audio=audio, sample_rate=rate, label=voice)


def test_voice_similarity_tells_the_same_speaker_from_another(tmp_path):
    refs = [_speech(tmp_path, "en+m3", t) for t in TEXTS[:3]]
    same = voice_similarity([_speech(tmp_path, "en+m3", TEXTS[3])], refs)
    other = voice_similarity([_speech(tmp_path, "en+f3", TEXTS[3])], refs)
    assert same.unavailable is None and other.unavailable is None
    assert same.value > other.value + 0.05
    # the threshold comes from the references themselves: the same voice clears it, the other does not
    assert same.details["share_above_threshold"] == 1.0
    assert other.details["share_above_threshold"] == 0.0


@pytest.mark.filterwarnings("error::RuntimeWarning")  # silence is recognised, not divided by
def test_voice_similarity_counts_a_silent_sample_and_measures_the_rest(tmp_path):
    refs = [_speech(tmp_path, "en+m3", t) for t in TEXTS[:2]]
    silent = AVClip(np.zeros((1, 8, 8, 3), np.uint8), np.zeros(16000, np.float32), 16000)
    r = voice_similarity([silent, _speech(tmp_path, "en+m3", TEXTS[3])], refs)
    assert r.details["samples_without_speech"] == 1
    assert r.details["per_sample"][0] is None and r.value == pytest.approx(r.details["per_sample"][1])
    assert r.details["share_above_threshold"] == 0.5  # of all samples: the silent one is not the presenter


def _damaged(clip: AVClip) -> AVClip:
    """The same speech with loud noise, then clipped hard."""
    rng = np.random.default_rng(0)
    peak = np.abs(clip.audio).max()
    noisy = clip.audio + rng.normal(0, 0.1 * peak, clip.audio.shape).astype(np.float32)
    return AVClip(clip.frames, np.clip(noisy * 4, -peak / 2, peak / 2).astype(np.float32), clip.sample_rate)


def test_dnsmos_scores_clean_speech_above_noisy_clipped_speech(tmp_path):
    clean = _speech(tmp_path, "en+m3", TEXTS[0])
    good, bad = speech_quality([clean]), speech_quality([_damaged(clean)])
    assert good.unavailable is None and 1.0 <= bad.value < good.value - 0.3 <= 5.0
    assert good.details["silent_samples"] == 0 and set(good.details) >= {"sig_mos", "bak_mos", "p808_mos"}


def test_dnsmos_on_one_thread_scores_as_speechmos_itself_does(tmp_path):
    from speechmos import dnsmos

    clip = _speech(tmp_path, "en+m3", TEXTS[1])
    got = speech_quality([clip]).details
    audio = librosa.resample(clip.audio, orig_sr=clip.sample_rate, target_sr=16000, res_type="soxr_hq")
    window = np.resize(np.clip(audio, -1, 1), 144160)  # looped to one 9.01 s window, as speech_quality does
    want = dnsmos.run(window, 16000)  # its own sessions, on every core
    assert got["per_sample"][0] == pytest.approx(want["ovrl_mos"], abs=1e-4)
    for k in ("sig_mos", "bak_mos", "p808_mos"):
        assert got[k] == pytest.approx(want[k], abs=1e-4)


def test_a_silent_sample_is_the_worst_speech_not_a_gap():
    silent = AVClip(np.zeros((1, 8, 8, 3), np.uint8), np.zeros(16000, np.float32), 16000)
    r = speech_quality([silent])
    assert r.value == 1.0 and r.details["silent_samples"] == 1 and r.unavailable is None


def test_references_are_embedded_once_across_calls(monkeypatch):
    from hhtune.evaluation.metrics import voice

    seen = []
    monkeypatch.setattr(voice, "_embed", lambda clip: seen.append(clip.label) or np.ones(4) / 2)
    clip = lambda label: AVClip(np.zeros((1, 8, 8, 3), np.uint8), np.ones(16000, np.float32), 16000, label)
    refs = [clip("r1"), clip("r2")]
    for checkpoint in ("a", "b"):
        assert voice_similarity([clip(checkpoint)], refs).value == pytest.approx(1.0)
    assert seen == ["r1", "r2", "a", "b"]
