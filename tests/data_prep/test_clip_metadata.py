"""Metadata rows for one time range of a file (``start_s``/``end_s``): their values win for the clips whose middle
they hold, over the file's row and over the captioner; their keys and ranges are checked as strictly as a file's."""

from __future__ import annotations

import pytest
from _dp_footage import make_clip, write_metadata
from test_caption_answer import DESCRIPTION
from test_caption_endpoint import GOOD, _Server

from data_prep.build import BuildError, load_metadata, load_units, prepare_all
from data_prep.captioner.stage import caption_units
from data_prep.config import CaptionerConfig, DataConfig

CFG = {"min_seconds": 1.0, "max_seconds": 2.0, "base_resolution": 32, "workers": 1, "mouth_regions": False}


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """Two 3 s b-rolls (no audio track: quick), each cut into clips at 0-1.48 s and 1.5-2.98 s. The row for 0-1 s of
    a.mp4 holds its first clip's middle (0.74 s), not the whole clip; the row for 2.9-3 s holds no middle."""
    d = tmp_path_factory.mktemp("footage")
    make_clip(d / "a.mp4", seconds=3.0, audio=None)
    make_clip(d / "b.mp4", seconds=3.0, audio=None)
    write_metadata(d, [
        {"file_name": "a.mp4", "start_s": 0, "end_s": 1, "caption": "A close-up of the watch.",
         "background_sound": "Soft piano music", "speaker": "a watchmaker"},
        {"file_name": "a.mp4", "caption": "A wide shot of the studio.", "background_sound": "Traffic"},
        {"file_name": "a.mp4", "start_s": 2.9, "end_s": 3.0, "caption": "Too short for any clip."},
        {"file_name": "b.mp4", "start_s": 1.5, "end_s": 3, "caption": "The watch on black velvet."},
        {"file_name": "b.mp4", "start_s": 0, "end_s": 1.5, "background_sound": "Wind", "speaker": "a watchmaker"},
    ])  # fmt: skip
    return d


@pytest.fixture(scope="module")
def prepared(footage, tmp_path_factory):
    """Stages 1-7 run on ``footage`` once; each test reads the units afresh (``load_units``)."""
    out = tmp_path_factory.mktemp("out") / "ds"
    prepare_all(footage, out, DataConfig(**CFG), progress=False)
    return out


def _clips(units) -> dict[str, list]:
    return {u.file: sorted(u.clips, key=lambda c: c.start_s) for u in units}


def test_a_clip_row_wins_over_the_file_row_for_the_clips_it_holds(prepared):
    units = load_units(prepared)
    a = _clips(units)["a.mp4"]
    assert [(c.start_s, c.end_s) for c in a] == [(0.0, 1.48), (1.5, 2.98)]
    assert a[0].caption == "A close-up of the watch.\n\nBackground Sound:\n<Soft piano music>"
    assert a[1].caption == "A wide shot of the studio.\n\nBackground Sound:\n<Traffic>"  # the file's row
    assert (a[0].speaker, a[1].speaker) == ("a watchmaker", "the speaker")
    notes = next(u.notes for u in units if u.file == "a.mp4")
    assert "metadata row for 2.9-3 s holds the middle of no clip: not used" in notes


def test_a_clip_rows_description_survives_the_captioner(footage, prepared):
    server = _Server([GOOD])
    try:
        cfg = DataConfig(**CFG, captioner=CaptionerConfig(model="m", endpoint=server.url, retries=0, frames=2))
        b = _clips(caption_units(load_units(prepared), footage, prepared, cfg, load_metadata(footage)[0],
                                 progress=False))
    finally:
        server.close()
    assert len(server.requests) == 1  # b's first clip only: a's file row and b's second clip give a description
    assert b["b.mp4"][0].caption.startswith(DESCRIPTION)
    assert b["b.mp4"][0].caption.endswith("Background Sound:\n<Wind>")  # the clip row's, not the captioner's hum
    assert b["b.mp4"][0].speaker == "a watchmaker"  # not the captioner's "woman in grey blazer"
    assert b["b.mp4"][1].caption == "The watch on black velvet.\n\nBackground Sound:\n<No prominent background sound>"
    assert b["a.mp4"][0].caption.startswith("A close-up of the watch.")


def test_an_unknown_key_in_a_clip_row_stops_the_build(tmp_path):
    make_clip(tmp_path / "a.mp4", seconds=1.0, audio=None)
    write_metadata(tmp_path, [{"file_name": "a.mp4", "start_s": 0, "end_s": 1, "language": "de"}])
    with pytest.raises(BuildError, match=r"^metadata.jsonl:1: unknown metadata key\(s\) 'language' \(a.mp4\); allowed "
                                         r"in a row for the clips of a time range: file_name, start_s, end_s, caption, "
                                         r"speaker, trigger, background_sound \(see docs/data.md\)$"):  # fmt: skip
        load_metadata(tmp_path)


@pytest.mark.parametrize(("rows", "message"), [
    ([{"start_s": 1.0, "end_s": 1.0}], r"^metadata.jsonl:2: the range 1-1 s of a.mp4 is not a time range: start_s "
                                       r"must be 0 or more and end_s after it$"),
    ([{"start_s": -1, "end_s": 0.5}], r"^metadata.jsonl:2: the range -1-0.5 s of a.mp4 is not a time range"),
    ([{"start_s": 4, "end_s": 6}], r"^metadata.jsonl:2: the range 4-6 s lies outside a.mp4, which is 2.\d\d s long$"),
    ([{"start_s": 0, "end_s": 1.2}, {"start_s": 1, "end_s": 2}],
     r"^metadata.jsonl:3: the range 1-2 s of a.mp4 overlaps metadata.jsonl:2's \(0-1.2 s\)"),
    ([{"start_s": 0}], r"^metadata.jsonl:2: a row for the clips of one time range of a.mp4 needs both start_s and "
                       r"end_s \(seconds\); it has no end_s$"),
    ([{"start_s": "0:30", "end_s": 40}], r"^metadata.jsonl:2: start_s and end_s must be seconds \(numbers\), not "
                                         r"'0:30' and 40 \(a.mp4\)$"),
])  # fmt: skip
def test_a_bad_range_stops_the_build_naming_the_row(tmp_path, rows, message):
    make_clip(tmp_path / "a.mp4", seconds=2.0, audio=None)
    write_metadata(tmp_path, [{"file_name": "a.mp4", "language": "en"}, *({"file_name": "a.mp4", **r} for r in rows)])
    with pytest.raises(BuildError, match=message):
        load_metadata(tmp_path)


def test_clip_rows_in_metadata_csv_are_read_in_seconds_and_sorted(tmp_path):
    make_clip(tmp_path / "a.mp4", seconds=2.0, audio=None)
    rows = ["file_name,start_s,end_s,caption,language", "a.mp4,1,2,Second.,", "a.mp4,,,Whole file.,de",
            "a.mp4,0,1,First.,"]  # fmt: skip
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    meta, refused = load_metadata(tmp_path)
    assert refused == [] and meta == {"a.mp4": {
        "file_name": "a.mp4", "caption": "Whole file.", "language": "de",
        "clips": [{"start_s": 0.0, "end_s": 1.0, "caption": "First."}, {"start_s": 1.0, "end_s": 2.0,
                                                                         "caption": "Second."}]}}  # fmt: skip
