"""A brand's folder as it comes: two spoken files with an ``.srt`` and a ``.txt`` but no language declared, a German
interview with no transcript (tiny Whisper), a music b-roll, a b-roll with no audio track, and a transcript whose
language cannot be told. Everything is kept as what it is, and nothing is captioned falsely."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import datasets
import pytest
from _dp_footage import long_speech_footage, make_clip, speech_clip, write_metadata
from _tiny_whisper import build_tiny_whisper

from data_prep.alignment import CUE_PAD
from data_prep.build import BuildError, build, load_metadata
from data_prep.config import DataConfig
from data_prep.segment import fixed_clips
from hhtune.contract import HAS_AUDIO_COLUMN

MUSIC = "aevalsrc=0.2*sin(2*PI*262*t)+0.2*sin(2*PI*330*t)+0.2*sin(2*PI*392*t)*(0.6+0.4*sin(2*PI*3*t))"
GERMAN = ["Guten Morgen und willkommen zur Sendung.", "Danke und auf Wiedersehen."]


def brand_folder(d: Path, speech: Path) -> dict[str, list[tuple[float, float]]]:
    """The folder, and when each sentence of the talk and the interview is said."""
    _, en = long_speech_footage(d, "talk", "en", "en-us", ["Good morning and welcome to the show.",
                                                           "Thank you for watching and goodbye."], pauses=[0.4, 0.8])
    long_speech_footage(d, "bonjour", "fr", "fr", ["Bonjour et bienvenue à notre émission."], pauses=[0.4])
    (d / "bonjour.srt").unlink()
    (d / "bonjour.txt").write_text("Bonjour et bienvenue à notre émission.\n")
    _, de = long_speech_footage(d, "interview", "de", "de", GERMAN, pauses=[0.5, 1.5])
    (d / "interview.srt").unlink()
    make_clip(d / "broll_music.mp4", seconds=7.0, audio=MUSIC)
    make_clip(d / "broll_silent.mp4", seconds=3.0, audio=None)
    speech_clip(d / "unclear.mp4", speech)
    (d / "unclear.txt").write_text("OK\n")
    write_metadata(d, [{"file_name": "broll_music.mp4", "background_sound": "Soft piano music"}])
    return {"talk.mp4": en, "interview.mp4": de}


def build_brand(folder: Path, tmp: Path) -> tuple[Path, str]:
    """The build with tiny Whisper, and what it printed on stderr."""
    cfg = DataConfig(asr_model=str(build_tiny_whisper(tmp / "whisper")), trigger="northwind", min_seconds=1.0,
                     max_seconds=3.0, base_resolution=32, workers=2)  # fmt: skip
    console = io.StringIO()
    with contextlib.redirect_stderr(console):
        out = build(folder, tmp / "ds", cfg, progress=False)
    return out, console.getvalue()


@pytest.fixture(scope="module")
def built(tmp_path_factory, speech):
    folder = tmp_path_factory.mktemp("brand")
    spoken = brand_folder(folder, speech)
    out, console = build_brand(folder, tmp_path_factory.mktemp("out"))
    report = {f["file"]: f for f in json.loads((out / "report.json").read_text())["files"]}
    rows: dict[str, list[dict]] = {}
    for r in datasets.load_from_disk(str(out / "dataset")):
        rows.setdefault(r["source_file"], []).append(r)
    return out, report, rows, console, spoken


@pytest.mark.slow  # > 20 s: a real build with Whisper in worker processes
def test_transcripts_without_a_declared_language_are_aligned(built):
    out, report, rows, _, _ = built
    sources = json.loads((out / "manifest.json").read_text())["clip_sources"]
    for name, language, kind in (("talk.mp4", "en", "srt"), ("bonjour.mp4", "fr", "txt")):
        assert report[name]["language"] == language and report[name]["language_source"] == "lingua"
        assert report[name]["alignment_method"] == "dtw"
        assert rows[name] and all(r["language"] == language and "Dialogue:" in r["caption"] for r in rows[name])
        assert all(sources[r["clip_id"]]["transcript"] == kind for r in rows[name])
        assert all(sources[r["clip_id"]]["language_confidence"] > 0.6 for r in rows[name])
    assert report["talk.mp4"]["fate"] == "split"  # one clip per cue


@pytest.mark.slow
def test_the_interview_is_transcribed_by_whisper_and_its_cues_place_the_words(built):
    out, report, rows, _, spoken = built
    entry = report["interview.mp4"]
    assert entry["transcript_source"] == "asr" and entry["language"] == "de", (entry["reason"], entry["notes"])
    assert entry["language_source"] == "whisper"
    assert any("Whisper hears 'de'" in n for n in entry["notes"])
    assert any(n.startswith("low-confidence ASR") for n in entry["notes"])  # the tiny model is never sure
    sources = json.loads((out / "manifest.json").read_text())["clip_sources"]
    clips = rows["interview.mp4"]
    assert clips and all(sources[r["clip_id"]]["transcript"] == "asr" for r in clips)
    assert all('<the speaker, German>: "guten' in r["caption"] for r in clips)
    said = spoken["interview.mp4"]
    words = [(w["start"] + r["start_s"], w["end"] + r["start_s"]) for r in clips
             for w in json.loads(r["alignment"])["words"]]  # fmt: skip
    assert words
    # every word was aligned inside the cue Whisper heard it in: the sentence it was said in, give or take the pad
    assert all(any(a - CUE_PAD - 0.1 <= s and e <= b + CUE_PAD + 0.1 for a, b in said) for s, e in words), (words, said)
    assert {min(range(len(said)), key=lambda k: abs(said[k][0] - s)) for s, _ in words} == {0, 1}  # both sentences


@pytest.mark.slow
def test_b_roll_is_kept_without_a_false_caption(built):
    out, report, rows, _, _ = built
    music, silent = report["broll_music.mp4"], report["broll_silent.mp4"]
    assert music["kind"] == "ambient" and silent["kind"] == "silent video"
    assert music["fate"] == "split" and silent["fate"] == "used"
    used = sum(r["end"] - r["start"] for r in music["timeline"] if r["status"] == "used")
    assert used >= 0.8 * music["duration_s"]  # music is not silence
    for name in ("broll_music.mp4", "broll_silent.mp4"):
        for r in rows[name]:
            assert r["caption"].startswith("northwind\n\nBackground Sound:\n<") and "Dialogue" not in r["caption"]
            assert "speaks" not in r["caption"] and r["transcript"] == ""
    assert all(r["caption"].endswith("<Soft piano music>") for r in rows["broll_music.mp4"])
    assert all(r[HAS_AUDIO_COLUMN] is False for r in rows["broll_silent.mp4"])
    assert all(r[HAS_AUDIO_COLUMN] is True for name in rows if name != "broll_silent.mp4" for r in rows[name])
    summary = json.loads((out / "report.json").read_text())
    assert summary["by_kind"]["silent video"]["clips"] == len(rows["broll_silent.mp4"])
    assert summary["by_kind"]["ambient"]["clips"] == len(rows["broll_music.mp4"])


@pytest.mark.slow
def test_an_unusable_transcript_is_a_console_warning(built):
    _, report, _, console, _ = built
    assert "warning: 1 file(s) have a transcript that was not used (unclear.mp4)" in console
    assert 'add "language": "en"' in console and "metadata.jsonl" in console
    assert report["unclear.mp4"]["language"] == "unknown"


def test_an_unknown_metadata_key_stops_the_build(tmp_path):
    make_clip(tmp_path / "a.mp4", seconds=1.0)
    write_metadata(tmp_path, [{"file_name": "a.mp4", "langauge": "de"}])
    with pytest.raises(BuildError, match=r"metadata.jsonl:1: unknown metadata key\(s\) 'langauge' \(a.mp4\); "
                                         r"allowed: file_name, language, caption"):  # fmt: skip
        load_metadata(tmp_path)


def test_silent_video_can_be_skipped(tmp_path):
    from data_prep.prepare import prepare_file

    make_clip(tmp_path / "a.mp4", seconds=2.0, audio=None)
    for sub in ("units", "clips"):
        (tmp_path / "w" / sub).mkdir(parents=True)
    unit = prepare_file(tmp_path / "a.mp4", "a.mp4", {}, DataConfig(keep_silent_video=False), tmp_path / "w")
    assert unit.fate == "skipped" and unit.reason == "no audio track (keep_silent_video: false)"


def test_footage_without_words_is_cut_in_equal_lengths():
    cut = fixed_clips(7.0, 1.0, 3.0)
    assert [(c.start, c.frames) for c in cut.clips] == [(0.0, 57), (round(7 / 3, 6), 57), (round(14 / 3, 6), 57)]
    assert all(c.end <= d.start + 1e-6 for c, d in zip(cut.clips, cut.clips[1:])) and cut.clips[-1].end <= 7.0
    short = fixed_clips(0.5, 1.0, 3.0)
    assert not short.clips and short.dropped[0].reason.startswith("too short")
