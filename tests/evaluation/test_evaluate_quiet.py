"""`python -m hhtune.evaluate` filters the dependency notices training filters (hhtune.quiet), and only those."""

from __future__ import annotations

import warnings

import torch
import yaml

from hhtune import evaluate
from hhtune.evaluation import runner


def test_evaluate_silences_the_weight_norm_notice_of_the_vaes(tmp_path, monkeypatch, capsys):
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "WANDB_QUIET"):
        monkeypatch.delenv(var, raising=False)  # quiet_dependencies sets them: restored after the test

    def evaluate_run(run_dir, **_kw):  # what loading the audio VAE does, then another library's warning
        torch.nn.utils.weight_norm(torch.nn.Linear(2, 2))
        warnings.warn("a warning nobody filtered", FutureWarning, stacklevel=1)
        return {"recommendation": {"checkpoint": "final", "strength": 1.0}}

    monkeypatch.setattr(runner, "evaluate_run", evaluate_run)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({}))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert evaluate.main([str(tmp_path)]) == 0
    assert [str(w.message) for w in seen if issubclass(w.category, FutureWarning)] == ["a warning nobody filtered"]
    assert '"recommended_strength": 1.0' in capsys.readouterr().out
