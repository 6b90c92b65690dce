"""Fixtures of the data_prep tests (helpers live in ``_dp_footage.py``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _dp_footage import SENTENCE, ffmpeg


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> Path:
    """An English sentence spoken by espeak-ng, with 0.4 s of silence either side (WAV)."""
    d = tmp_path_factory.mktemp("speech")
    raw = d / "raw.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), SENTENCE], check=True)
    out = d / "speech.wav"
    ffmpeg("-i", str(raw), "-af", "adelay=400,apad=pad_dur=0.4", str(out))
    return out
