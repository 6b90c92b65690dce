"""The local captioner on tiny random Qwen models (real classes), and the captioned build of the sample footage."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _caption_models import build_tiny_omni, build_tiny_omni3, build_tiny_vl
from _dp_footage import SAMPLE

from data_prep.captioner import CaptionerError, captioner_identity, load_captioner
from data_prep.captioner.media import ClipMedia
from data_prep.captioner.stage import CACHE
from data_prep.config import CaptionerConfig

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def omni(tmp_path_factory) -> Path:
    return build_tiny_omni(tmp_path_factory.mktemp("omni"))


def _batch(n: int = 2) -> list[ClipMedia]:
    rng = np.random.default_rng(0)
    return [ClipMedia([rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(3)],
                      (0.1 * rng.standard_normal(32000)).astype(np.float32)) for _ in range(n)]  # fmt: skip


def _seen_inputs(captioner) -> dict[str, list]:
    """What reached the vision tower and the audio tower (their tensor inputs' shapes, per call)."""
    calls: dict[str, list] = {"visual": [], "audio_tower": []}
    for name, module in captioner.model.named_modules():
        tower = name.rsplit(".", 1)[-1]
        if tower in calls:
            module.register_forward_hook(lambda _m, a, kw, _o, t=tower: calls[t].append(
                [tuple(v.shape) for v in (*a, *kw.values()) if torch.is_tensor(v)]), with_kwargs=True)
    return calls


@pytest.mark.parametrize("family", ["qwen2_5_omni", "qwen3_omni_moe"])
def test_omni_sees_every_frame_and_hears_the_audio_batched(family, omni, tmp_path):
    folder = omni if family == "qwen2_5_omni" else build_tiny_omni3(tmp_path)
    cfg = CaptionerConfig(model=str(folder), max_new_tokens=4, batch_size=2)
    cap = load_captioner(cfg)
    assert cap.hears and captioner_identity(cfg) == (cap.identity, True)
    calls = _seen_inputs(cap)
    answers = cap.answer(_batch(), "Describe.")
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    ((_, grid),) = calls["visual"]  # one call for the batch: both clips' frames
    assert grid == (6, 3)  # 3 frames per clip, 2 clips
    ((mel, *_),) = calls["audio_tower"]
    assert mel == (16, 2 * 200)  # each clip's 2 s of sound: 100 mel frames a second, 16 mel bins


def test_picture_only_model_gets_frames_and_no_audio(tmp_path):
    cap = load_captioner(CaptionerConfig(model=str(build_tiny_vl(tmp_path)), max_new_tokens=4))
    assert not cap.hears
    calls = _seen_inputs(cap)
    cap.answer(_batch(1), "Describe.")
    assert calls["visual"][0][1] == (3, 3) and calls["audio_tower"] == []


def test_a_folder_that_is_not_a_supported_model_names_what_it_found(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(CaptionerError, match=r"no config.json.*found: weights.bin"):
        captioner_identity(CaptionerConfig(model=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(CaptionerError, match=r"holds a whisper model; supported: Qwen2\.5-Omni"):
        captioner_identity(CaptionerConfig(model=str(tmp_path)))


@pytest.mark.slow  # > 20 s: stages 1-7 on the seven sample files, then the tiny Omni on every clip
def test_sample_footage_captioned_in_the_official_format(omni, tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from caption_format import main as caption_format_main

    from data_prep.__main__ import main

    footage = tmp_path / "footage"
    shutil.copytree(SAMPLE, footage)
    rows = [json.loads(line) for line in (footage / "metadata.jsonl").read_text().splitlines()]
    (footage / "metadata.jsonl").write_text("".join(  # no description given: every clip goes to the captioner
        json.dumps({k: v for k, v in r.items() if k != "caption"}) + "\n" for r in rows))
    config = tmp_path / "data.yaml"
    config.write_text((ROOT / "recipes" / "quickstart_data.yaml").read_text()
                      + f"captioner:\n  model: {omni}\n  max_new_tokens: 8\n  frames: 2\n")
    out = tmp_path / "ds"
    assert main(["build", str(footage), "--out", str(out), "--config", str(config), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    clips = [c for f in report["files"] for c in f["clip_ids"]]
    assert clips and len(list((out / CACHE).glob("*.json"))) == len(clips)
    notes = [n for f in report["files"] for n in f["notes"]]
    assert sum("captioner answer not used" in n for n in notes) == len(clips)  # noise: every clip keeps its own
    assert caption_format_main([str(out), "--trigger", "hhsample"]) == 1  # only en_presenter has that trigger
    assert caption_format_main([str(out)]) == 0
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / CACHE).iterdir()}
    monkeypatch.setattr("data_prep.captioner.load_captioner", lambda _cfg: pytest.fail("captioned again"))
    assert main(["build", str(footage), "--out", str(out), "--config", str(config), "--no-progress"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / CACHE).iterdir()} == stamp
