"""The report: autoescaped captions, relative media paths, and a real browser loading every video, image and link."""

from __future__ import annotations

import json

import numpy as np
from _browser import open_in_browser

from hhtune.evaluation.curves import plot_curves
from hhtune.evaluation.metrics import DESCRIPTIONS
from hhtune.evaluation.report import write_report
from hhtune.sampling.generate import OUTPUT_AUDIO_RATE, write_mp4

CAPTION = 'A host smiles. Dialogue: <a presenter, German>: "Hallo <b>zusammen</b>."'


def _metric(value):
    return {"name": "x", "value": value, "details": {}, "unavailable": None if value is not None else "no model"}


def _result(root):
    out = root / "eval"
    rng = np.random.default_rng(0)
    samples = []
    for label in ("base", "step-00000002", "final"):
        frames = rng.integers(0, 255, (9, 32, 48, 3), dtype=np.uint8)
        audio = (0.1 * rng.standard_normal((int(OUTPUT_AUDIO_RATE * 0.36), 2))).astype(np.float32)
        write_mp4(frames, audio, out / "videos" / label / "p00_s7.mp4")
        samples.append({"variant": label, "prompt": 0, "seed": 7, "mp4": f"videos/{label}/p00_s7.mp4"})
    curves = plot_curves({"step-00000002": 2, "final": 4}, {"speech_quality": {"step-00000002": 2.5, "final": 3.0}},
                         {"speech_quality": 2.0}, out / "curves")  # fmt: skip
    metrics = {v: {n: _metric(1.0 if n == "speech_quality" else None) for n in DESCRIPTIONS if n != "drift"}
               for v in ("base", "step-00000002", "final")}  # fmt: skip
    result = {
        "run_dir": str(root), "eval_dir": str(out),
        "checkpoints": [{"label": "step-00000002", "step": 2}, {"label": "final", "step": 4}],
        "prompts": [CAPTION], "seeds": [7], "strengths": [0.5, 1.0], "samples": samples,
        "curves": {k: p.relative_to(out).as_posix() for k, p in curves.items()},
        "metrics": metrics, "drift": {"step-00000002": _metric(0.1), "final": _metric(0.2)},
        "recommendation": {"checkpoint": "step-00000002", "step": 2, "strength": 0.5,
                           "why": {"rule": "highest mean", "scores": {"step-00000002": 1.0, "final": 0.0}}},
        "transfer": {"strengths": [0.5, 1.0], "gaps": {"0.5": 0.1, "1.0": 0.2}, "no_adapter_gap": 0.05,
                     "quality": {"0.5": {"speech_quality": 3.0}, "1.0": {"speech_quality": 2.9}},
                     "quality_names": ["speech_quality"], "tolerance": 0.1, "reference": "r", "measured": "m"},
        "descriptions": DESCRIPTIONS,
        "not_measured": [{"metric": "face_similarity", "reason": "no face model <dlib> installed"}],
    }  # fmt: skip
    (out / "eval.json").write_text(json.dumps(result))
    return result, out


def test_captions_are_escaped_and_media_paths_relative(tmp_path):
    result, out = _result(tmp_path)
    page = write_report(result, out).read_text()
    assert "&lt;a presenter, German&gt;" in page and "<b>zusammen</b>" not in page
    assert 'src="videos/base/p00_s7.mp4"' in page and 'src="curves/speech_quality.png"' in page
    assert str(tmp_path / "eval" / "videos") not in page


def test_report_loads_in_a_real_browser(tmp_path):
    result, out = _result(tmp_path)
    write_report(result, out)
    seen = open_in_browser(tmp_path, "eval/report.html")
    assert len(seen["videos"]) == 3, seen["videos"]
    assert all(v["ready"] >= 1 and v["error"] is None for v in seen["videos"]), seen["videos"]
    assert seen["images"] and all(i["width"] > 0 for i in seen["images"]), seen["images"]
    assert seen["links"] and all(link["ok"] for link in seen["links"]), seen["links"]
    assert seen["recommended"] == "step-00000002"
    assert '<a presenter, German>: "Hallo <b>zusammen</b>."' in seen["text"]  # shown as text, not swallowed as tags
    assert "no face model <dlib> installed" in seen["text"]
    for name, text in DESCRIPTIONS.items():
        assert name in seen["text"] and text in seen["text"]


def test_a_transfer_not_measured_is_said_with_its_reason(tmp_path):
    """The default run trains on the distilled checkpoint: without --base-checkpoint there is no transfer."""
    result, out = _result(tmp_path)
    result["transfer"] = {"unavailable": "the run trained on the distilled checkpoint; pass --base-checkpoint"}
    result["recommendation"]["strength"] = None
    page = write_report(result, out).read_text()
    assert "Transfer not measured: the run trained on the distilled checkpoint; pass --base-checkpoint" in page
    assert 'id="recommended-strength">not measured' in page
