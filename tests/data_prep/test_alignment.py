"""``python -m data_prep align`` and a build align a file the same way: one function, with the build's cue padding,
neighbour bounds and too-long check, gives the words a build cuts its clips from."""

from __future__ import annotations

import shutil

import pytest
from _dp_footage import long_speech_footage

from data_prep.__main__ import main
from data_prep.config import DataConfig
from data_prep.prepare import prepare_file
from data_prep.segment import window
from data_prep.units import Unit
from hhtune.speech.align import Alignment

SENTENCES = ["Good morning and welcome to the show.", "Today we talk about the new collection.",
             "Thank you and goodbye."]


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    """Three sentences with short pauses, one SRT cue each at the exact spoken times."""
    mp4, _ = long_speech_footage(tmp_path_factory.mktemp("talk"), "talk", "en", "en-us", SENTENCES,
                                 pauses=[0.5, 0.3, 0.4])  # fmt: skip
    return mp4


def _build(mp4, work) -> Unit:
    """Stages 1-7 of a build on one file (what a build's worker runs)."""
    for sub in ("units", "clips"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    return prepare_file(mp4, mp4.name, {}, DataConfig(min_seconds=1.0, max_seconds=5.0, base_resolution=32,
                                                      language="en"), work)  # fmt: skip


def _same(a: Alignment, b: Alignment) -> None:
    for xs, ys in ((a.words, b.words), (a.phonemes, b.phonemes)):
        assert [x.label for x in xs] == [y.label for y in ys]
        for x, y in zip(xs, ys):
            assert (x.start, x.end, x.confidence) == pytest.approx((y.start, y.end, y.confidence), abs=1e-3), (x, y)


@pytest.mark.slow
def test_align_command_gives_the_build_alignment(talk, tmp_path):
    unit = _build(talk, tmp_path / "work")
    assert main(["align", str(talk), "--language", "en", "--out", str(tmp_path / "a")]) == 0
    whole = Alignment.from_json((tmp_path / "a" / "talk.alignment.json").read_text())
    assert unit.alignment_method == whole.method == "dtw" and len(unit.clips) >= 2, unit
    for c in unit.clips:  # each clip's alignment is the command's, cut to the clip and moved into its time
        _same(window(whole, c.start_s, c.end_s), Alignment.from_json(c.alignment))
    assert sum(len(Alignment.from_json(c.alignment).words) for c in unit.clips) == len(whole.words) > 10


def test_a_transcript_too_long_for_its_audio_is_refused_by_both(talk, tmp_path, capsys):
    footage = tmp_path / "f"
    footage.mkdir()
    shutil.copy(talk, footage / "long.mp4")
    (footage / "long.txt").write_text(" ".join(SENTENCES * 8))
    unit = _build(footage / "long.mp4", tmp_path / "work")
    assert unit.fate == "skipped" and unit.reason.startswith("the transcript is longer than the clip: "), unit.reason
    capsys.readouterr()
    assert main(["align", str(footage / "long.mp4"), "--language", "en"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {unit.reason}"
