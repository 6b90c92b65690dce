"""What a training run prints about its outputs: the validation scores as a small table."""

from __future__ import annotations

from hhtune.training.outputs import format_scores


def test_validation_scores_print_as_a_table_one_metric_a_line():
    text = format_scores(40, {"av_offset_frames": 2.0, "av_sync_confidence": 0.7062175571918488, "note": "x"})
    assert text.splitlines() == ["validation at step 40:",
                                 "  av_offset_frames             2",
                                 "  av_sync_confidence      0.7062",
                                 "  note                x"]  # fmt: skip
    assert format_scores(3, {}) == "validation at step 3: no scores"
