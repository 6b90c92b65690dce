"""Scoring clips in background processes while sampling goes on: the same numbers and the same errors as serial."""

from __future__ import annotations

import json

import numpy as np
from talking_face import RATE, talking_clip

from hhtune import face
from hhtune.cli import run_command
from hhtune.evaluation.background import BackgroundScorer
from hhtune.evaluation.clips import AVClip
from hhtune.evaluation.metrics import dnsmos, face_identity, voice
from hhtune.evaluation.scoring import METRICS, result_dict, score_samples


def _clips(seeds, frames=20) -> list[AVClip]:
    out = []
    for s in seeds:
        video, audio = talking_clip(2, frames=frames, seed=s)
        out.append(AVClip(video, audio, RATE, f"clip{s}"))
    return out


def _score(clips, refs, workers: int) -> dict:
    """As the evaluation scores: the references and each clip handed over as they come, then one score call."""
    with BackgroundScorer(workers) as scorer:
        for ref in refs:
            scorer.submit(ref, ("voice_similarity", "face_similarity"))
        for clip in clips:
            scorer.submit(clip, METRICS)
        scorer.finish()
        got = score_samples(clips, refs)
    return json.loads(json.dumps({k: result_dict(r) for k, r in got.items()}, default=lambda o: o.tolist()))


def test_scores_from_background_workers_equal_serial_scores(monkeypatch):
    serial = _score(_clips([1, 2]), _clips([3, 4]), workers=0)
    assert all(serial[k]["unavailable"] is None for k in ("speech_quality", "lip_sync", "face_similarity"))

    def not_here(*_a):
        raise AssertionError("computed in the main process: the workers' values were not used")

    clips, refs = _clips([1, 2]), _clips([3, 4])  # new arrays: nothing of the serial run is cached for them
    for module, name in ((dnsmos, "_score"), (face, "landmarks"), (voice, "_embed"), (face_identity, "_describe")):
        monkeypatch.setattr(module, name, not_here)  # here only; the spawned workers compute for real
    assert _score(clips, refs, workers=2) == serial  # exactly, every detail


def test_a_metric_error_in_a_worker_is_reported_as_serial_scoring_reports_it(capsys):
    no_frames = AVClip(np.zeros((0, 32, 32, 3), np.uint8), np.zeros(RATE, np.float32), RATE)  # face identity fails
    ended = {}
    for workers in (0, 1):
        code = run_command(lambda _argv, w=workers: _score([no_frames], _clips([3]), w), [])
        ended[workers] = code, capsys.readouterr().err
    assert ended[0][0] != 0 and ended[0][1].startswith("error: ")
    assert ended[1] == ended[0]  # the same exit code and the same lines (no worker traceback)


def test_a_negative_worker_count_is_one_error_line(tmp_path, capsys):
    from hhtune import evaluate

    (tmp_path / "recipe.yaml").write_text("{}\n")
    assert evaluate.main([str(tmp_path), "--metric-workers", "-1"]) == 2
    assert capsys.readouterr().err == "error: --metric-workers must be 0 or more\n"


def test_a_worker_runs_torch_on_one_thread_with_its_models_loaded_before_the_first_clip():
    import torch

    from hhtune.evaluation.metrics import per_clip

    threads = torch.get_num_threads()
    for cached in (dnsmos._model, voice._encoder, face_identity._model):
        cached.cache_clear()
    try:
        torch.set_num_threads(2)  # as a process starts on a 2-core machine
        per_clip.prepare()
        assert torch.get_num_threads() == 1  # the sampler keeps the other cores
        assert all(f.cache_info().currsize == 1 for f in (dnsmos._model, voice._encoder, face_identity._model))
    finally:
        torch.set_num_threads(threads)


def test_metric_workers_default_to_one_on_a_gpu_and_none_on_the_cpu():
    from hhtune.evaluation.plan import metric_workers_for

    assert metric_workers_for("cuda", None) == 1 and metric_workers_for("cpu", None) == 0
    assert metric_workers_for("cpu", 2) == 2 and metric_workers_for("cuda", 0) == 0
