"""Long multi-cue footage in three languages: the clips keep >= 90% of the transcribed speech, no clip boundary
falls inside a word, and every second of every file is accounted for."""

from __future__ import annotations

import itertools
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from _dp_footage import long_speech_footage, write_metadata

from data_prep.build import prepare_all
from data_prep.config import DataConfig
from data_prep.report import write_report
from data_prep.units import Clip
from hhtune.contract import SPEECH_SAMPLE_RATE
from hhtune.media import read_audio

pytestmark = pytest.mark.slow  # the shared build of three long files takes over a minute

pytestmark = pytest.mark.slow  # every test shares one build of three minutes of speech (~45 s)

PAUSES = [0.6, 0.9, 0.5, 1.2, 0.7, 0.8]
TEXTS = {
    "en": ("en-us", ["Good morning and welcome to our studio.", "Today we talk about the new spring collection.",
                     ("Every piece is made by hand in a small workshop near the sea, and each one takes about three "
                      "days to finish from the first cut to the last stitch."),
                     "Thank you for watching.", "See you next week.", "Goodbye."]),
    "de": ("de", ["Guten Morgen und willkommen im Studio.", "Heute sprechen wir über die neue Kollektion.",
                  "Jedes Stück wird von Hand gefertigt.", "Vielen Dank fürs Zuschauen.", "Bis nächste Woche.",
                  "Auf Wiedersehen."]),
    "zh": ("cmn-latn-pinyin", ["早上好，欢迎来到我们的工作室。", "今天我们来谈谈新的春季系列。",
                               "每一件作品都是手工制作的。",
                               "谢谢大家的观看。", "我们下周再见。", "再见。"]),
}  # fmt: skip


def _pinyin(text: str) -> str:
    from pypinyin import Style, lazy_pinyin

    return " ".join(p for p in lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True) if p.isalnum())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("long")
    truth = {}
    for lang, (voice, sentences) in TEXTS.items():
        spoken = [_pinyin(s) for s in sentences] if lang == "zh" else None
        _, cues = long_speech_footage(d, f"{lang}_talk", lang, voice, sentences, pauses=PAUSES,
                                      fps=30 if lang == "de" else 25, spoken=spoken)  # fmt: skip
        truth[f"{lang}_talk.mp4"] = cues
    write_metadata(d, [{"file_name": f"{lang}_talk.mp4", "language": lang} for lang in TEXTS])
    cfg = DataConfig(min_seconds=1.0, max_seconds=5.0, base_resolution=32, workers=2)
    out = tmp_path_factory.mktemp("out")
    units = prepare_all(d, out, cfg, progress=False)
    return d, {u.file: u for u in units}, truth, out


class _Page(HTMLParser):
    """Collects the timeline ranges per file section and the clip blocks of report.html."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, dict] = {}
        self.current: str | None = None
        self.clips: list[str] = []
        self.images: dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-file" in a:
            self.current = a["data-file"]
            self.files[self.current] = {"duration": float(a["data-duration"]), "ranges": []}
        if "data-status" in a and self.current:
            self.files[self.current]["ranges"].append((float(a["data-start"]), float(a["data-end"]), a["data-status"],
                                                       a["data-reason"]))  # fmt: skip
        if "data-clip" in a:
            self.clips.append(a["data-clip"])
        if tag == "img" and a.get("src", "").startswith("data:image/png;base64,"):
            self.images[a.get("class", "")] = self.images.get(a.get("class", ""), 0) + 1


def test_report_html_accounts_for_every_second(built):
    _, units, _, out = built
    summary = write_report(list(units.values()), out)
    page = _Page()
    page.feed((out / "report.html").read_text())
    assert set(page.files) == set(units)
    for name, f in page.files.items():
        total = sum(b - a for a, b, _, _ in f["ranges"])
        assert total == pytest.approx(f["duration"], abs=1e-3) == units[name].probe.duration
        assert all(why for _, _, status, why in f["ranges"] if status == "dropped")
        used = sum(b - a for a, b, status, _ in f["ranges"] if status == "used")
        assert used == pytest.approx(sum(c.end_s - c.start_s for c in units[name].clips), abs=0.05)
    n = sum(len(u.clips) for u in units.values())
    assert len(page.clips) == n and page.images.get("thumbs") == n and page.images.get("alignment") == n
    t = summary["totals"]
    assert t["transcribed_used_s"] >= 0.9 * t["transcribed_s"] > 0
    assert sum(summary["seconds"].values()) == pytest.approx(t["source_seconds"], abs=0.05)
    assert "Speech kept:" in (out / "report.html").read_text()


def _covered(spans: list[tuple[float, float]], clips: list[Clip]) -> float:
    t = np.arange(0, max(b for _, b in spans), 0.01)
    speech = np.zeros_like(t, dtype=bool)
    used = np.zeros_like(t, dtype=bool)
    for a, b in spans:
        speech |= (t >= a) & (t < b)
    for c in clips:
        used |= (t >= c.start_s) & (t < c.end_s)
    return float((speech & used).sum() / speech.sum())


@pytest.mark.parametrize("lang", list(TEXTS))
def test_clips_keep_the_transcribed_speech(built, lang):
    _, units, truth, _ = built
    u = units[f"{lang}_talk.mp4"]
    assert u.alignment_method == "dtw" and len(u.clips) >= 3, u
    share = _covered(truth[u.file], u.clips)
    assert share >= 0.9, (lang, share, [(c.start_s, c.end_s) for c in u.clips], truth[u.file])
    assert u.speech_coverage["transcribed_used_s"] >= 0.9 * u.speech_coverage["transcribed_s"]
    for c in u.clips:
        assert (c.num_frames - 1) % 4 == 0 and 1.0 - 1e-6 <= c.num_frames / 25 <= 5.0 + 1e-6


@pytest.mark.parametrize("lang", list(TEXTS))
def test_no_clip_boundary_falls_inside_a_word(built, lang):
    d, units, truth, _ = built
    u = units[f"{lang}_talk.mp4"]
    audio = read_audio(d / u.file, SPEECH_SAMPLE_RATE)
    loud = np.sqrt(np.mean(audio[np.abs(audio) > 1e-3] ** 2))
    for c in u.clips:
        for edge in (c.start_s, c.end_s):
            # measured on the sound itself, not on our own alignment: a boundary sits where the voice is quiet
            a = int(edge * SPEECH_SAMPLE_RATE)
            level = np.sqrt(np.mean(audio[max(0, a - 240) : a + 240] ** 2))
            inside = [(s, e) for s, e in truth[u.file] if s + 0.05 < edge < e - 0.05]
            assert level < 0.2 * loud or not inside, (lang, edge, level / loud)
        # and never inside a word the aligner found
        for w in json.loads(c.alignment)["words"]:
            assert 0 <= w["start"] and w["end"] <= c.end_s - c.start_s + 1e-6


@pytest.mark.parametrize("lang", list(TEXTS))
def test_every_second_is_accounted_for(built, lang):
    _, units, _, _ = built
    u = units[f"{lang}_talk.mp4"]
    ranges = u.timeline
    assert ranges[0]["start"] == 0 and ranges[-1]["end"] == pytest.approx(u.probe.duration, abs=1e-3)
    for x, y in itertools.pairwise(ranges):
        assert x["end"] == pytest.approx(y["start"], abs=1e-9)
    used = sum(r["end"] - r["start"] for r in ranges if r["status"] == "used")
    assert used == pytest.approx(sum(c.end_s - c.start_s for c in u.clips), abs=0.05)
    assert all(r["reason"] for r in ranges if r["status"] == "dropped")
