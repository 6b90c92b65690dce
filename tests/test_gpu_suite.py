"""benchmarks/gpu_suite.py: its --dry-run keeps working on the CPU, and every part fails on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_suite  # noqa: E402


def _errors(node, path="") -> list[str]:
    if isinstance(node, dict):
        found = [f"{path}: {node['error']}"] if "error" in node else []
        return found + [e for k, v in node.items() for e in _errors(v, f"{path}/{k}")]
    return []


@pytest.mark.slow
def test_dry_run_measures_every_part_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--dry-run", "--out", str(tmp_path)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_suite.json").read_text())
    parts = result["parts"]
    assert set(parts) == {"train", "attention", "memory", "sample"} and not _errors(parts), _errors(parts)
    runs = parts["train"]["runs"]
    assert runs["256p eager"]["s_per_step"] > 0 and runs["540p eager"]["tokens"] > runs["256p eager"]["tokens"]
    for mode in ("256p compiled", "540p compiled"):  # measured, or said not to exist
        assert runs[mode].get("s_per_step", 0) > 0 or "not available" in runs[mode]["skipped"]
    assert all(r["paths"] for r in parts["attention"].values() if isinstance(r, dict))
    tiers = [r for r in parts["memory"].values() if isinstance(r, dict)]
    assert len(tiers) == 2 and all(r["planned_train_peak_gb"] > 0 for r in tiers)
    assert parts["sample"]["seconds"] > 0 and parts["sample"]["official_s"] == 1.6
    assert "| 256p eager |" in (tmp_path / "gpu_suite.md").read_text()


def test_a_failing_part_does_not_stop_the_others(monkeypatch):
    def broken(setup, clock):
        raise RuntimeError("CUDA out of memory")

    def fine(setup, clock):
        return {"ok": True}

    monkeypatch.setattr(gpu_suite, "PARTS", {"train": broken, "attention": fine, "memory": broken, "sample": fine})
    result = gpu_suite.run(gpu_suite.DRY, budget_s=60)
    assert result["parts"]["train"]["error"] == "RuntimeError: CUDA out of memory"
    assert result["parts"]["attention"]["ok"] and result["parts"]["sample"]["ok"]
    assert "error" in result["parts"]["memory"]


def test_mfu_flops_and_attention_kernel_names():
    recipe = gpu_suite.recipe_for(gpu_suite.DRY)
    cfg = recipe.preset_config()
    q = cfg.num_heads_q * cfg.head_dim
    one, two = gpu_suite.train_flops(recipe, 1000), gpu_suite.train_flops(recipe, 2000)
    # 6 x active params x tokens is linear in tokens; attention adds 12 x layers x tokens^2 x query width
    assert two - 2 * one == pytest.approx(12 * cfg.num_layers * q * (2000**2 - 2 * 1000**2))
    paths = gpu_suite.attention_paths
    assert paths(["void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128>>"]) == ["flash"]
    assert paths(["fmha_cutlassF_bf16_aligned_64x64_rf_sm80"]) == ["efficient"]
    assert paths(["aten::_scaled_dot_product_attention_math", "aten::softmax"]) == ["math"]
    assert paths(["cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x128"]) == ["cudnn"]
    assert paths(["aten::mm"]) == []
