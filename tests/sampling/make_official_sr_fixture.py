"""Write ``tests/fixtures/official_sr.json`` from the official code (run once by hand; tests never run this).

    python tests/sampling/make_official_sr_fixture.py /path/to/daVinci-MagiHuman/git-dir

It reads ``inference/pipeline/scheduler_unipc.py`` (the official ``FlowUniPCMultistepScheduler``) and the
``ZeroSNRDDPMDiscretization`` class of ``inference/pipeline/video_generate.py`` out of the official repository's
HEAD, and records:

* ``sr_steps_5_shift_5``: the SR stage's schedule (``set_timesteps(5, shift=5.0)``), sigmas and integer timesteps;
* ``zero_snr_signal``: the official ``sigmas`` table (``ZeroSNRDDPMDiscretization()(1000, flip=True)``) at a few
  indices, ``noise_value = 220`` among them;
* ``trajectory``: the SR stage of ``MagiEvaluator.evaluate`` / ``evaluate_with_latent`` replayed on small latents
  with the official scheduler and closed-form velocity fields (below), as the latent after every step. The noise
  is drawn from ``torch.Generator().manual_seed(SEED)``: first the video noise, then the audio noise, the order of
  the official code.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).parents[1] / "fixtures" / "official_sr.json"
SEED = 7
BASE_VIDEO, BASE_AUDIO, SR_HW = (1, 4, 3, 2, 3), (1, 5, 6), (4, 6)
REFERENCE = (1, 4, 1, 4, 6)
NOISE_VALUE, AUDIO_NOISE_SCALE, GUIDANCE, TRICK_FRAMES, TRICK_VALUE = 220, 0.7, 3.5, 2, 2.0


def cond_field(video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """The conditional velocity of the replay: depends on both inputs (audio through its mean)."""
    return 0.5 * video - 0.2 + 0.1 * audio.mean()


def uncond_field(video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """The unconditional velocity of the replay."""
    return -0.3 * video + 0.05 * audio.std()


def _show(git_dir: str, path: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", "show", f"HEAD:{path}"], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def _official(git_dir: str):
    tmp = Path(tempfile.mkdtemp())
    (tmp / "scheduler_unipc.py").write_text(_show(git_dir, "inference/pipeline/scheduler_unipc.py"))
    spec = importlib.util.spec_from_file_location("official_unipc", tmp / "scheduler_unipc.py")
    unipc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(unipc)
    source = _show(git_dir, "inference/pipeline/video_generate.py")
    node = next(n for n in ast.parse(source).body
                if isinstance(n, ast.ClassDef) and n.name == "ZeroSNRDDPMDiscretization")  # fmt: skip
    scope = {"np": np, "torch": torch, "partial": partial}
    exec(compile(ast.Module([node], []), "video_generate.py", "exec"), scope)
    return unipc.FlowUniPCMultistepScheduler, scope["ZeroSNRDDPMDiscretization"]


def _replay(scheduler_cls, table: torch.Tensor, guided: bool, pinned: bool) -> dict:
    """The official SR stage (``evaluate`` from the trilinear upsampling on) on fixed small inputs."""
    gen = torch.Generator().manual_seed(0)
    base_video, base_audio = torch.randn(BASE_VIDEO, generator=gen), torch.randn(BASE_AUDIO, generator=gen)
    reference = torch.randn(REFERENCE, generator=gen) if pinned else None
    gen = torch.Generator().manual_seed(SEED)
    latent = torch.nn.functional.interpolate(base_video, size=(BASE_VIDEO[2], *SR_HW), mode="trilinear",
                                             align_corners=True)  # fmt: skip
    sigma = table[NOISE_VALUE]
    latent = latent * sigma + torch.randn(latent.shape, generator=gen) * (1 - sigma**2) ** 0.5
    audio = torch.randn(base_audio.shape, generator=gen) * AUDIO_NOISE_SCALE + base_audio * (1 - AUDIO_NOISE_SCALE)
    sched = scheduler_cls()
    sched.set_timesteps(5, device="cpu", shift=5.0)
    scale = torch.tensor(GUIDANCE).expand(1, 1, BASE_VIDEO[2], 1, 1).clone()
    scale[:, :, :TRICK_FRAMES] = min(TRICK_VALUE, GUIDANCE)
    states = []
    for t in sched.timesteps:
        if reference is not None:
            latent[:, :, :1] = reference[:, :, :1]
        v = cond_field(latent, audio)
        if guided:
            u = uncond_field(latent, audio)
            v = u + scale * (v - u)
        latent = sched.step(v, t, latent, return_dict=False)[0]
        states.append(latent.flatten().tolist())
    if reference is not None:
        latent[:, :, :1] = reference[:, :, :1]
    return {"guided": guided, "pinned": pinned, "states": states, "final": latent.flatten().tolist(),
            "noisy_audio": audio.flatten().tolist()}  # fmt: skip


def main(git_dir: str) -> None:
    """Write the fixture."""
    scheduler_cls, zero_snr = _official(git_dir)
    sched = scheduler_cls()
    sched.set_timesteps(5, device="cpu", shift=5.0)
    table = zero_snr()(1000, do_append_zero=False, flip=True)
    fixture = {
        "note": "Official FlowUniPCMultistepScheduler().set_timesteps(5, shift=5.0), ZeroSNRDDPMDiscretization()"
                "(1000, do_append_zero=False, flip=True), and the SR stage of MagiEvaluator.evaluate replayed with "
                "them (tests/sampling/make_official_sr_fixture.py)",
        "sr_steps_5_shift_5": {"sigmas": sched.sigmas.tolist(), "timesteps": sched.timesteps.tolist()},
        "zero_snr_signal": {str(i): float(table[i]) for i in (0, 1, 100, 220, 500, 998, 999)},
        "trajectory": {
            "seed": SEED, "base_video": list(BASE_VIDEO), "base_audio": list(BASE_AUDIO), "sr_hw": list(SR_HW),
            "noise_value": NOISE_VALUE, "audio_noise_scale": AUDIO_NOISE_SCALE, "guidance": GUIDANCE,
            "cfg_trick_frames": TRICK_FRAMES, "cfg_trick_value": TRICK_VALUE,
            "runs": [_replay(scheduler_cls, table, guided, pinned)
                     for guided, pinned in ((False, False), (True, True))],
        },
    }  # fmt: skip
    OUT.write_text(json.dumps(fixture))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
