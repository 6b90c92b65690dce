"""data_prep's ``sr_resolution``: each clip is also encoded at the super-resolution size, next to the base one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _dp_footage import SENTENCE, speech_clip

from data_prep.build import build
from data_prep.config import DataConfig
from hhtune.contract import MANIFEST, SR_VIDEO_LATENTS, VIDEO_LATENTS, sr_size
from hhtune.training import TrainingDataset

SMALL = {"min_seconds": 0.5, "max_seconds": 3.0, "base_resolution": 64, "workers": 1, "tiny_encoders": True}


@pytest.mark.slow  # ~30 s: two builds with the tiny encoders
def test_clips_are_encoded_at_the_sr_size_of_their_bucket_on_request(tmp_path, speech):
    footage = tmp_path / "footage"
    footage.mkdir()
    speech_clip(footage / "host.mp4", speech, size="512x288")
    (footage / "host.txt").write_text(f"{SENTENCE}.")
    plain = build(footage, tmp_path / "ds", DataConfig(**SMALL), encode=True, progress=False)
    assert not TrainingDataset(plain).has_sr  # without sr_resolution the column is absent
    # asked for afterwards, every clip is encoded again (its latents' key names the SR size)
    # mutation: clip_key without sr_resolution -> the base-only latents are reused and have no SR latents
    out = build(footage, tmp_path / "ds", DataConfig(**SMALL, sr_resolution="540p"), encode=True, progress=False)
    data = TrainingDataset(out)
    assert data.has_sr and json.loads((out / MANIFEST).read_text())["settings"]["sr_resolution"] == "540p"
    rows = data.ds.with_format("numpy")
    assert len(rows) >= 1
    for r in rows:
        width, height = sr_size(r["bucket"], 64, "540p")  # 16:9 at 64: 128x64 -> 256x128
        # mutation: frames read at the base size -> the base latent's grid, not the SR one
        assert r[SR_VIDEO_LATENTS].shape == (48, r[VIDEO_LATENTS].shape[1], height // 16, width // 16)
        assert (width, height) == (2 * r["width"], 2 * r["height"])
        assert np.isfinite(r[SR_VIDEO_LATENTS]).all()
    batch = data.collate([0], 0)
    assert batch.sr_video.shape[-2:] == (height // 16, width // 16)
