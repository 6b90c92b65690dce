"""Scoring the variants: a missing metric model stops nothing, and the checkpoint choice follows the numbers."""

from __future__ import annotations

import numpy as np

from hhtune.evaluation import scoring
from hhtune.evaluation.clips import AVClip
from hhtune.evaluation.metrics import MetricResult


def _clip(level: int) -> AVClip:
    return AVClip(frames=np.full((5, 8, 8, 3), level, np.uint8), audio=np.zeros(800, np.float32), sample_rate=16000)


def test_a_missing_metric_model_does_not_stop_the_others(monkeypatch):
    missing = MetricResult("voice_similarity", None, {}, unavailable="resemblyzer is not installed")
    monkeypatch.setattr(scoring.m, "voice_similarity", lambda *_a: missing)
    got = scoring.score_samples([_clip(10)], [_clip(20)])
    assert got["voice_similarity"].unavailable == "resemblyzer is not installed"
    assert {"speech_quality", "lip_sync", "face_similarity", "look_distance"} <= got.keys()
    assert got["speech_quality"].unavailable is None and got["speech_quality"].value is not None
    no_refs = scoring.score_samples([_clip(10)], [], no_references="footage not on this machine")
    assert no_refs["look_distance"].unavailable == "footage not on this machine"
    assert no_refs["speech_quality"].unavailable is None


def test_the_strength_search_scores_only_the_quality_metrics(monkeypatch):
    def never(*_a):
        raise AssertionError("the strength search does not need face or look")

    monkeypatch.setattr(scoring.m, "face_similarity", never)
    monkeypatch.setattr(scoring.m, "look_distance", never)
    got = scoring.score_samples([_clip(10)], [_clip(20)], names=scoring.QUALITY_METRICS)
    assert sorted(got) == sorted(scoring.QUALITY_METRICS)


def _r(name, value, unavailable=None):
    return MetricResult(name, value, {}, unavailable)


def test_the_checkpoint_with_the_best_measured_metrics_is_chosen():
    per = {"step-1": {"voice_similarity": _r("voice_similarity", 0.5), "look_distance": _r("look_distance", 3.0)},
           "step-2": {"voice_similarity": _r("voice_similarity", 0.9), "look_distance": _r("look_distance", 1.0)},
           "step-3": {"voice_similarity": _r("voice_similarity", 0.7), "look_distance": _r("look_distance", 2.0)}}
    label, why = scoring.choose_checkpoint(per)
    assert label == "step-2" and why["scores"]["step-2"] == 1.0 and why["scores"]["step-1"] == 0.0
    blind = {k: {"voice_similarity": _r("voice_similarity", None, "no model")} for k in per}
    assert scoring.choose_checkpoint(blind)[0] == "step-3"  # nothing measured: the last checkpoint
    tie = {k: {"voice_similarity": _r("voice_similarity", 0.8)} for k in per}
    assert scoring.choose_checkpoint(tie)[0] == "step-3"  # a tie goes to the later checkpoint
