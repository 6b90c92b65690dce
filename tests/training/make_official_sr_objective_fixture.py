"""Write ``tests/fixtures/official_sr_objective.json``: the numbers of the official SR stage the SR objective uses.

Not a test: run by hand when the official code changes, with the official checkout's ``inference/`` folder::

    git --git-dir=PATH/daVinci-MagiHuman.git archive HEAD inference | tar x -C /tmp/official
    PYTHONPATH=/tmp/official python tests/training/make_official_sr_objective_fixture.py

It runs the official code as the SR stage of ``MagiEvaluator`` does (``inference/pipeline/video_generate.py``):
``ZeroSNRDDPMDiscretization()(1000, do_append_zero=False, flip=True)[noise_value]`` is the re-noising signal level,
and ``FlowUniPCMultistepScheduler().set_timesteps(sr_num_inference_steps, shift=shift)`` the schedule, with the
defaults of the official ``EvaluationConfig``. ``video_generate.py`` imports the whole pipeline (CUDA kernels,
VAEs), so its ZeroSNR class is taken from the file's syntax tree and run alone.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from functools import partial
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).parents[1] / "fixtures" / "official_sr_objective.json"


def _official_module(name: str):
    spec = importlib.util.find_spec("inference")
    return Path(spec.submodule_search_locations[0]) / "pipeline" / name


def _zero_snr_class():
    tree = ast.parse(_official_module("video_generate.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ZeroSNRDDPMDiscretization")
    scope = {"np": np, "torch": torch, "partial": partial}
    exec(compile(ast.Module([node], []), "video_generate.py", "exec"), scope)
    return scope["ZeroSNRDDPMDiscretization"]


def _config_defaults() -> dict:
    """The defaults of the official ``EvaluationConfig`` fields (``Field(default=...)``), read from the source
    (importing it needs pydantic-settings and the distributed setup)."""
    path = _official_module("video_generate.py").parents[1] / "common" / "config.py"
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "EvaluationConfig")
    out = {}
    for item in cls.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.value, ast.Call):
            default = next((k.value for k in item.value.keywords if k.arg == "default"), None)
            if isinstance(default, ast.Constant):
                out[item.target.id] = default.value
    return {k: out[k] for k in ("noise_value", "sr_num_inference_steps", "shift", "sr_audio_noise_scale")}


def _scheduler_class():
    spec = importlib.util.spec_from_file_location("scheduler_unipc", _official_module("scheduler_unipc.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FlowUniPCMultistepScheduler


def main() -> None:
    FlowUniPCMultistepScheduler = _scheduler_class()  # noqa: N806 -- the official class

    cfg = _config_defaults()
    sigmas = _zero_snr_class()()(1000, do_append_zero=False, flip=True)
    sched = FlowUniPCMultistepScheduler()
    sched.set_timesteps(cfg["sr_num_inference_steps"], device="cpu", shift=cfg["shift"])
    out = {"config": cfg, "renoise_signal": float(sigmas[cfg["noise_value"]]),
           "sr_sigmas": [float(s) for s in sched.sigmas], "sr_timesteps": [int(t) for t in sched.timesteps],
           "note": "official ZeroSNRDDPMDiscretization()(1000, do_append_zero=False, flip=True)[noise_value]; "
                   "FlowUniPCMultistepScheduler().set_timesteps(sr_num_inference_steps, shift=shift), defaults of "
                   "EvaluationConfig (inference/pipeline/video_generate.py, scheduler_unipc.py, "
                   "inference/common/config.py)"}  # fmt: skip
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
