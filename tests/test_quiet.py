"""The dependency notices the entry points (training, ``python -m data_prep``) filter, and only those."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import os, sys, warnings
sys.modules["onnxruntime"] = None  # as where it is not installed: pyopenjtalk-plus prints its notice on import
from hhtune.quiet import quiet_dependencies
quiet_dependencies()
import jieba, pyopenjtalk, torch
jieba.lcut("欢迎来到我们的工作室")
torch.nn.utils.weight_norm(torch.nn.Linear(2, 2))
warnings.warn("a warning nobody filtered", FutureWarning)
print(os.environ["WANDB_QUIET"], os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"])
print("done")
"""


def test_known_notices_are_filtered_and_others_still_shown(tmp_path):
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
                               "PYTHONPATH": ":".join(sys.path)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "true 1\ndone\n"  # pyopenjtalk's ONNX notice went nowhere; wandb and HF bars quiet
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["<string>:9: FutureWarning: a warning nobody filtered"], done.stderr  # not a blanket ignore
