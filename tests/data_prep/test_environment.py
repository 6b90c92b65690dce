"""A missing system tool or Python package stops the build at the start with the install command."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from data_prep.__main__ import main
from data_prep.checks import EnvironmentProblem, check_environment, missing_requirements


def _path_without(tmp_path: Path, *tools: str) -> str:
    """A PATH with every tool of the real PATH linked in, except ``tools``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        for p in Path(d).glob("*") if Path(d).is_dir() else []:
            if p.name not in tools and not (bin_dir / p.name).exists():
                (bin_dir / p.name).symlink_to(p)
    return str(bin_dir)


def test_the_real_environment_has_every_requirement():
    assert missing_requirements() == ([], [])  # `make setup` installs everything the build checks for
    assert check_environment() is None


def test_missing_tools_stop_the_build_with_the_apt_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", _path_without(tmp_path, "espeak-ng", "ffprobe"))
    assert shutil.which("espeak-ng") is None and shutil.which("ffmpeg") is not None
    with pytest.raises(EnvironmentProblem, match=r"sudo apt-get install -y espeak-ng ffmpeg"):
        check_environment()
    footage = tmp_path / "footage"
    footage.mkdir()
    out = tmp_path / "out"
    assert main(["build", str(footage), "--out", str(out), "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: data_prep cannot run here") and "apt-get install -y espeak-ng ffmpeg" in err
    assert not out.exists()  # nothing was built, no report claiming files were "skipped"


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name,
                        *a: None if name in ("av", "silero_vad") else real(name, *a))
    with pytest.raises(EnvironmentProblem,
                       match=r"missing Python packages \(av, silero-vad\): pip install av silero-vad"):
        check_environment()
