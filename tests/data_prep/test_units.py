"""Units and clips as the cache stores them: keys in field order, fields no stage reached left out, and read back."""

from __future__ import annotations

import json
from dataclasses import replace

from data_prep.units import Clip, Unit
from hhtune.media import Probe


def _clip() -> Clip:
    return Clip("a-0f1e2d-000", "a.mp4", 0.12, 1.08, "en", "A person speaks.", "hi", '{"method": "none"}', "none",
                (0.0, 1.0, 1.0), "silero", "1:1", 32, 32, 25, "the speaker")  # fmt: skip


def test_unit_json_keeps_field_order_and_leaves_out_what_no_stage_filled():
    unit = Unit("a.mp4", "used", clips=[_clip()], notes=["mono audio"], inputs="abc",
                probe=Probe(2.0, 25.0, 32, 32, 0, "h264", 1, 16000), language="en", vad="silero", speech_seconds=0.5,
                timeline=[{"start": 0.0, "end": 2.0, "status": "used", "reason": ""}])  # fmt: skip
    data = unit.to_json()
    assert list(data) == ["file", "fate", "reason", "clips", "notes", "inputs", "probe", "language", "vad",
                          "speech_seconds", "timeline"]  # fmt: skip
    assert list(data["clips"][0]) == ["clip_id", "source_file", "start_s", "end_s", "language", "caption", "transcript",
                                      "alignment", "alignment_method", "speech_mask", "mask_source", "bucket", "width",
                                      "height", "num_frames", "speaker", "transcript_source", "language_source",
                                      "language_confidence", "has_audio"]  # fmt: skip
    assert data["clips"][0]["speech_mask"] == [0.0, 1.0, 1.0] and data["probe"]["audio_rate"] == 16000
    back = Unit.from_json(json.loads(json.dumps(data)))
    assert back == unit and json.dumps(back.to_json()) == json.dumps(data)
    assert Unit("b.mp4", reason="not a video file (.docx)").to_json() == {
        "file": "b.mp4", "fate": "skipped", "reason": "not a video file (.docx)", "clips": [], "notes": []}  # fmt: skip


def test_a_clips_mouth_boxes_survive_the_cache_as_tuples():
    clip = replace(_clip(), mouth_boxes=((1, 0, 2, 1), (-1, -1, -1, -1)), no_face_frames=1)
    data = json.loads(json.dumps(clip.to_json()))
    assert data["mouth_boxes"] == [[1, 0, 2, 1], [-1, -1, -1, -1]] and data["no_face_frames"] == 1
    assert Clip.from_json(data) == clip and "mouth_boxes" not in _clip().to_json()
