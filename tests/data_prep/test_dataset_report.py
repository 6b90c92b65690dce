"""Stage 9 and the report without the pipeline: the writer, the reader/validator, stale data, the PIL fallback."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest

from data_prep.config import load_data_config
from data_prep.dataset import load_dataset_dir, write_dataset
from data_prep.report import write_report
from data_prep.units import Clip, Unit
from hhtune.dataset import DatasetError
from hhtune.media import Probe
from hhtune.speech.align import Alignment, Interval


def _unit(name: str, fate_clips: int, language: str = "en", frames: int = 9) -> Unit:
    clips = []
    for k in range(fate_clips):
        a = Alignment("dtw", [Interval(0.04, 0.2, "hi", 0.5)],
                      [Interval(0.04, 0.1, "h", 0.5), Interval(0.1, 0.2, "aɪ", 0.5)])
        clips.append(Clip(clip_id=f"{name}-{k:03d}", source_file=f"{name}.mp4", start_s=k * 0.36,
                          end_s=k * 0.36 + frames / 25, language=language, caption="c", transcript="hi",
                          alignment=a.to_json(), alignment_method="dtw",
                          speech_mask=(1.0,) * 2 + (0.0,) * (frames - 2), mask_source="phonemes (dtw) & silero",
                          bucket="1:1", width=32, height=32, num_frames=frames, speaker="s"))  # fmt: skip
    fate = "skipped" if not clips else "used" if len(clips) == 1 else "split"
    return Unit(f"{name}.mp4", fate, "no audio track" if not clips else "", clips, language=language,
                alignment_method="dtw", probe=Probe(1.0, 25.0, 32, 32, 0, "h264", 1, 16000))  # fmt: skip


def test_unencoded_dataset_roundtrip_and_validation(tmp_path):
    units = [_unit("a", 2), _unit("b", 1, "ko"), _unit("c", 0)]
    cfg = load_data_config(None, {"base_resolution": 32})
    write_dataset(units, tmp_path, cfg, None)
    d = load_dataset_dir(tmp_path)
    assert len(d.dataset) == 3 and not d.encoded and d.manifest["languages"] == ["en", "ko"]
    assert set(d.dataset.column_names) >= {"clip_id", "speech_mask", "alignment", "num_frames", "bucket"}
    assert (tmp_path / "alignments" / "a-001.TextGrid").is_file()
    with pytest.raises(DatasetError, match="has no latents"):
        load_dataset_dir(tmp_path, require_encoded=True)
    with pytest.raises(DatasetError, match="other settings or encoders"):
        load_dataset_dir(tmp_path, fingerprint="nope")
    # a row that breaks the format is caught by the reader
    bad = [_unit("a", 1, frames=10)]
    write_dataset(bad, tmp_path / "bad", cfg, None)
    with pytest.raises(DatasetError, match="num_frames 10 is not 4k\\+1"):
        load_dataset_dir(tmp_path / "bad")
    with pytest.raises(DatasetError, match=r"no manifest.json"):
        load_dataset_dir(tmp_path / "nowhere")
    # the manifest's fingerprint follows the settings
    write_dataset(units, tmp_path / "other", load_data_config(None, {"base_resolution": 64}), None)
    other = json.loads((tmp_path / "other" / "manifest.json").read_text())
    assert other["fingerprint"] != d.manifest["fingerprint"]


def test_report_fates_counts_and_pil_fallback(tmp_path, monkeypatch):
    units = [_unit("a", 2), _unit("b", 1, "ko"), _unit("c", 0)]
    for u in units:
        for c in u.clips:
            (tmp_path / ".work" / "clips").mkdir(parents=True, exist_ok=True)
            np.savez(tmp_path / ".work" / "clips" / f"{c.clip_id}.npz", frames=np.zeros((9, 32, 32, 3), np.uint8))
    real_import = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    summary = write_report(units, tmp_path)
    monkeypatch.undo()
    assert summary["charts_drawn_with"] == "pillow"
    t = summary["totals"]
    assert (t["files"], t["used"], t["used_whole"], t["split"], t["skipped"], t["clips"]) == (3, 2, 1, 1, 1, 3)
    assert summary["by_language"]["en"]["clips"] == 2 and summary["by_bucket"] == {"1:1": {"clips": 3, "seconds": 1.08}}
    assert summary["phonemes"]["ko"]["distinct"] == 2 and summary["alignment"] == {"methods": {"dtw": 3},
                                                                                   "mean_word_confidence": 0.5}
    report = json.loads((tmp_path / "report.json").read_text())
    assert [f["fate"] for f in report["files"]] == ["split", "used", "skipped"]
    page = (tmp_path / "report.html").read_text()
    # strip + waveform per clip, durations, chart per language
    assert page.count("data:image/png;base64") == 3 * 2 + 1 + 2
    assert "split into 2 clips" in page and "no audio track" in page and "charts drawn with pillow" in page
    assert "src='http" not in page and 'src="http' not in page  # self-contained
