"""Speech outside every transcript cue is handled as the config says, and always accounted for."""

from __future__ import annotations

import re

import pytest
from _dp_footage import long_speech_footage

from data_prep.config import DataConfig
from data_prep.prepare import prepare_file
from data_prep.units import Unit

SENTENCES = ["Good morning and welcome to the show.", "This sentence has no subtitle at all.", "Thank you and goodbye."]


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    d = tmp_path_factory.mktemp("untranscribed")
    mp4, cues = long_speech_footage(d, "talk", "en", "en-us", SENTENCES, pauses=[0.5, 1.0, 1.0])
    srt = (d / "talk.srt").read_text().strip().split("\n\n")
    (d / "talk.srt").write_text("\n\n".join([srt[0], srt[2]]) + "\n")  # the middle sentence loses its cue
    return mp4, cues


def _run(footage, tmp_path, **settings) -> Unit:
    mp4, _ = footage
    cfg = DataConfig(min_seconds=1.0, max_seconds=5.0, base_resolution=32, language="en", **settings)
    for sub in ("units", "clips"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    return prepare_file(mp4, mp4.name, {}, cfg, tmp_path)


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def test_kept_as_speech_without_dialogue(footage, tmp_path):
    _, cues = footage
    unit = _run(footage, tmp_path)
    middle = cues[1]
    inside = [c for c in unit.clips if _overlap((c.start_s, c.end_s), middle) > 0.5 * (middle[1] - middle[0])]
    assert inside, [(c.start_s, c.end_s) for c in unit.clips]
    assert all("Dialogue" not in c.caption and c.mask_source == "silero" for c in inside)
    assert any("outside every transcript cue: kept as clips without a Dialogue line" in n for n in unit.notes)
    used = sum(_overlap((r["start"], r["end"]), middle) for r in unit.timeline if r["status"] == "used")
    assert used >= 0.9 * (middle[1] - middle[0])


def test_dropped_by_config_and_accounted(footage, tmp_path):
    _, cues = footage
    unit = _run(footage, tmp_path, untranscribed="drop")
    middle = cues[1]
    assert all(_overlap((c.start_s, c.end_s), middle) < 0.3 for c in unit.clips)
    dropped = sum(_overlap((r["start"], r["end"]), middle) for r in unit.timeline
                  if r["reason"] == "speech without transcript (dropped by config)")  # fmt: skip
    assert dropped >= 0.8 * (middle[1] - middle[0]), unit.timeline
    assert sum(r["end"] - r["start"] for r in unit.timeline) == pytest.approx(unit.probe.duration, abs=1e-3)
    assert len(unit.clips) >= 2  # the two transcribed sentences are still used


def test_asr_needs_a_model():
    with pytest.raises(ValueError, match=re.escape("untranscribed: asr needs asr_model")):
        DataConfig(untranscribed="asr")
