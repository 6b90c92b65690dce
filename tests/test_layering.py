"""hhtune never imports data_prep (data_prep is the pipeline on top), and the dataset contract is one rule."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from hhtune.contract import FPS, audio_samples_for, frames_for, frames_holding, seconds_of

ROOT = Path(__file__).parents[1]


def test_no_hhtune_module_imports_data_prep():
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (ROOT / "hhtune").rglob("*.py"))  # fmt: skip
    script = ("import importlib, sys\n"
              f"for m in {modules!r}:\n"
              "    importlib.import_module(m)\n"
              "bad = sorted(m for m in sys.modules if m == 'data_prep' or m.startswith('data_prep.'))\n"
              "print(len(sys.modules)); assert not bad, bad\n")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(modules) > 20  # every module really was imported


def test_no_hhtune_source_names_data_prep():
    # imports inside functions run only when called: the text must not name the package either
    statement = re.compile(r"^\s*(?:from|import)\s+data_prep\b", re.MULTILINE)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "hhtune").rglob("*.py") if statement.search(p.read_text())]
    assert not offenders


@pytest.mark.parametrize("seconds,frames", [(0.0, 1), (0.04, 1), (0.2, 5), (0.36, 9), (0.5, 9), (0.52, 13), (1.0, 25),
                                            (2.0, 49), (5.0, 125)])  # fmt: skip
def test_the_4k_plus_1_rule(seconds, frames):
    assert frames_for(seconds) == frames and (frames - 1) % 4 == 0
    assert seconds_of(frames) <= seconds + 1e-9 or frames == 1  # never longer than asked
    assert seconds_of(frames + 4) > seconds  # and the largest such count
    assert frames_holding(seconds_of(frames)) == frames


def test_sampling_and_data_prep_use_the_same_rule():
    from data_prep.segment import plan
    from hhtune.sampling.generate import latent_shapes
    from hhtune.speech.align import Interval

    for seconds in (0.5, 1.3, 2.0, 4.9):
        video, audio, _ = latent_shapes(seconds, "16:9", 64)
        assert audio[1] == frames_for(seconds) and video[2] == (frames_for(seconds) - 1) // 4 + 1
    clip = plan([Interval(0.2, 1.2, "a")], 10.0, 0.5, 0.5, pad_s=0.0)
    assert clip.clips == [] and clip.dropped  # 1 s of words never fit a 0.5 s clip: 9 frames, not 13
    assert plan([Interval(0.2, 0.5, "a")], 10.0, 0.1, 0.5, pad_s=0.0).clips[0].frames == frames_for(0.5) == 9
    assert audio_samples_for(9) == 9 * 2048 and FPS == 25
