"""The training clips evaluation compares samples with: cut from the footage folder the dataset manifest names."""

from __future__ import annotations

import datasets
import numpy as np

from hhtune.contract import FPS
from hhtune.evaluation.references import training_references
from hhtune.sampling.generate import OUTPUT_AUDIO_RATE, write_mp4


def test_references_are_cut_from_the_footage_the_manifest_names(tmp_path):
    footage = tmp_path / "footage"
    footage.mkdir()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (2 * FPS, 64, 64, 3), dtype=np.uint8)
    write_mp4(frames, (0.1 * rng.standard_normal((2 * OUTPUT_AUDIO_RATE, 2))).astype(np.float32), footage / "talk.mp4")
    ds = datasets.Dataset.from_dict({"source_file": ["talk.mp4", "talk.mp4"], "start_s": [0.0, 1.0],
                                     "end_s": [0.36, 1.4]})

    clips, why = training_references(ds, {"footage": str(footage)})
    assert why is None
    assert [len(c.frames) for c in clips] == [9, 10]  # 0.36 s and 0.4 s at 25 fps
    assert [round(len(c.audio) / c.sample_rate, 2) for c in clips] == [0.36, 0.4]

    clips, why = training_references(ds, {"settings": {}})  # an older manifest: no footage recorded
    assert clips == [] and "not recorded in the dataset manifest" in why
    clips, why = training_references(ds, {"footage": str(tmp_path / "elsewhere")})
    assert clips == [] and "elsewhere" in why and "not on this machine" in why
