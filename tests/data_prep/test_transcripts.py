"""SRT, WebVTT and plain-text transcripts, and their error messages."""

from __future__ import annotations

import pytest

from data_prep.transcripts import TranscriptError, parse_transcript


def test_srt_with_bom_crlf_and_tags(tmp_path):
    p = tmp_path / "a.srt"
    p.write_bytes("\ufeff1\r\n00:00:01,500 --> 00:00:03,000\r\n<i>Hello</i> there\r\n\r\n2\r\n00:00:03,200 --> "
                  "00:00:04,000\r\nworld\r\n".encode())
    t = parse_transcript(p)
    assert t.source == "srt" and t.text() == "Hello there world"
    assert (t.segments[0].start, t.segments[0].end) == (1.5, 3.0)


def test_vtt_with_cue_settings(tmp_path):
    p = tmp_path / "a.vtt"
    p.write_text("WEBVTT\n\nNOTE a note\n\n00:01.000 --> 00:02.500 align:start\nBonjour\n")
    t = parse_transcript(p)
    assert t.source == "vtt" and t.segments[0].start == 1.0 and t.segments[0].end == 2.5 and t.text() == "Bonjour"


def test_txt(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("  你好\n世界 ")
    t = parse_transcript(p)
    assert t.source == "txt" and t.segments[0].start is None and t.text() == "你好 世界"


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("a.srt", "1\n00:00:05,000 --> 00:00:04,000\nx\n", "cue ends before it starts"),
        ("b.srt", "1\n00:00:xx --> 00:00:04,000\nx\n", "bad cue timing"),
        ("c.srt", "just some text\n", "no SRT cues found"),
        ("d.vtt", "00:01.000 --> 00:02.000\nx\n", "must start with 'WEBVTT'"),
        ("e.ass", "x", "unsupported transcript type '.ass'"),
    ],
)
def test_malformed_transcripts_are_named(tmp_path, name, content, message):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(TranscriptError, match=message):
        parse_transcript(p)


def test_non_utf8(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(TranscriptError, match="not UTF-8"):
        parse_transcript(p)


def test_textgrid_fills_gaps_and_parses_back(tmp_path):
    from praatio import textgrid  # a real TextGrid reader, not a string search

    from data_prep.textgrid import write_textgrid
    from hhtune.speech.align import Alignment, Interval

    a = Alignment("dtw", [Interval(0.5, 1.0, "hi"), Interval(1.2, 1.6, 'say "x"')],
                  [Interval(0.5, 0.7, "h"), Interval(0.7, 1.0, "aɪ")])  # fmt: skip
    write_textgrid(a, 2.0, tmp_path / "a.TextGrid")
    tg = textgrid.openTextgrid(str(tmp_path / "a.TextGrid"), includeEmptyIntervals=True)
    assert tg.tierNames == ("words", "phones") and (tg.minTimestamp, tg.maxTimestamp) == (0.0, 2.0)
    words = [(e.start, e.end, e.label) for e in tg.getTier("words").entries]
    assert words == [(0.0, 0.5, ""), (0.5, 1.0, "hi"), (1.0, 1.2, ""), (1.2, 1.6, 'say "x"'), (1.6, 2.0, "")]
    phones = [(e.start, e.end, e.label) for e in tg.getTier("phones").entries]
    assert phones == [(0.0, 0.5, ""), (0.5, 0.7, "h"), (0.7, 1.0, "aɪ"), (1.0, 2.0, "")]
    assert Alignment.from_json(a.to_json()) == a
