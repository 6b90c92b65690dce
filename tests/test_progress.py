"""The one progress bar of training and data preparation: what it shows, and nothing when switched off."""

from __future__ import annotations

from hhtune.progress import ProgressBar


def test_bar_shows_description_count_and_status(capsys):
    with ProgressBar("train", 4, completed=1) as bar:
        bar.update(3, "loss 0.5000")
        bar.advance()
    out = capsys.readouterr().out
    assert "train" in out and "4/4" in out and "loss 0.5000" in out


def test_switched_off_or_empty_bar_prints_nothing(capsys):
    for bar in (ProgressBar("stages 1-7", 3, enabled=False), ProgressBar("stage 8: encode", 0)):
        with bar:
            bar.advance()
            bar.update(2, "x")
    assert capsys.readouterr().out == ""
