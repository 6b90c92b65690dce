"""The recommended strength in adapter headers and the model card; files written before it still load."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parents[1]))
from adapter_helpers import trained

from hhtune.adapters.formats.peft import from_peft_model, write_peft
from hhtune.adapters.formats.read import read_adapter
from hhtune.evaluation.publish import adapter_files, publish, set_recommended_strength


def _folder(tmp_path: Path) -> Path:
    return write_peft(from_peft_model(trained()), tmp_path / "run" / "export" / "peft", torch.float32)


def test_a_file_written_before_the_field_existed_still_loads(tmp_path):
    f = _folder(tmp_path) / "adapter_model.safetensors"
    with safe_open(f, framework="pt") as h:
        header = dict(h.metadata())
    old = json.loads(header["hhtune"])
    old.pop("recommended_strength")
    save_file(load_file(f), f, {**header, "hhtune": json.dumps(old)})
    assert read_adapter(f.parent).metadata.recommended_strength is None


def test_the_strength_is_written_into_the_header_and_read_back(tmp_path):
    folder = _folder(tmp_path)
    f = folder / "adapter_model.safetensors"
    before = load_file(f)
    set_recommended_strength(f, 0.75)
    assert read_adapter(folder).metadata.recommended_strength == 0.75
    with safe_open(f, framework="pt") as h:
        assert "0.75" in h.metadata()["modelspec.usage_hint"]
    after = load_file(f)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_publish_writes_card_run_info_and_every_adapter_file(tmp_path):
    _folder(tmp_path)
    run = tmp_path / "run"
    (run / "adapter").mkdir()
    (run / "run_info.json").write_text(json.dumps({"steps": 4, "base": "tiny"}))
    evaluation = {"recommended_strength": 0.5, "recommended_checkpoint": "step-00000002", "report": "eval/report.html"}
    publish(run, evaluation)
    card = (run / "adapter" / "README.md").read_text()
    assert "- recommended strength: 0.5 (distilled model, 8 steps)" in card and "`step-00000002`" in card
    assert json.loads((run / "run_info.json").read_text())["evaluation"] == evaluation
    assert [read_adapter(p.parent).metadata.recommended_strength for p in adapter_files(run)] == [0.5]
