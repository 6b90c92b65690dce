"""The two-stage render on the CPU with tiny models: ``hhtune.sample --sr``, validation with ``validation.sr`` and the
model card's stills, at the delivered size."""

from __future__ import annotations

import gc
import json
import subprocess
import weakref
from pathlib import Path

import pytest
from PIL import Image

from hhtune.contract import sr_size
from hhtune.encoders import build_tiny_encoders

PROMPT = 'A host. Dialogue:\n<host, English>: "Hi."'


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    return build_tiny_encoders(tmp_path_factory.mktemp("enc"))


def _streams(mp4: Path) -> dict[str, dict]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "stream=codec_name,codec_type,width,height,duration", "-of", "json", str(mp4)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


@pytest.mark.slow  # ~30 s on a busy 2-core machine: two tiny DiTs, prompt to mp4 at 544x288
def test_sample_sr_1080p_writes_a_playable_mp4_at_the_delivered_size_one_dit_at_a_time(encoders, tmp_path,
                                                                                       monkeypatch):  # fmt: skip
    """--sr 1080p on the tiny presets: the first DiT is dead before the SR one is built, every forward runs with one
    DiT alive, --adapter goes to the first stage and --sr-adapter to the SR stage, and the mp4 (with sound) and the
    contact sheet are at the 1080p size of the tiny base (64 rows x 4.25, rounded up to 32: 544x288)."""
    import hhtune.adapters
    from hhtune.model import HappyHorseTransformer
    from hhtune.sample import main

    built, events, adapted = [], [], []
    init, forward = HappyHorseTransformer.__init__, HappyHorseTransformer.forward

    def alive() -> int:
        gc.collect()
        return sum(ref() is not None for ref in built)

    def recording_init(self, *args, **kwargs):
        events.append(("build", alive()))
        init(self, *args, **kwargs)
        built.append(weakref.ref(self))

    def recording_forward(self, video, *args, **kwargs):
        events.append(("forward", alive(), tuple(video.shape[-2:])))
        return forward(self, video, *args, **kwargs)

    def recording_load(path, model, **_kwargs):
        adapted.append((Path(path).name, len(built)))
        return model

    monkeypatch.setattr(HappyHorseTransformer, "__init__", recording_init)
    monkeypatch.setattr(HappyHorseTransformer, "forward", recording_forward)
    monkeypatch.setattr(hhtune.adapters, "load", recording_load)
    image = tmp_path / "ref.png"
    Image.new("RGB", (80, 48), (200, 30, 30)).save(image)
    for name in ("first.safetensors", "sr.safetensors"):
        (tmp_path / name).write_bytes(b"")
    argv = ["--model", "tiny", "--random-weights", "--encoders", str(Path(encoders.video_vae).parent), "--prompt",
            PROMPT, "--seconds", "0.2", "--base-resolution", "64", "--image", str(image),
            "--out", str(tmp_path / "out"), "--device", "cpu", "--adapter", str(tmp_path / "first.safetensors"),
            "--sr", "1080p", "--sr-model", "tiny", "--sr-adapter", str(tmp_path / "sr.safetensors")]  # fmt: skip
    assert main(argv) == 0
    assert adapted == [("first.safetensors", 1), ("sr.safetensors", 2)]
    assert [e[:2] for e in events if e[0] == "build"] == [("build", 0), ("build", 0)]  # the first is gone
    forwards = [e for e in events if e[0] == "forward"]
    assert all(n == 1 for _, n, _ in forwards)
    width, height = sr_size("16:9", 64, "1080p")
    assert (width, height) == (544, 288)
    assert [hw for *_, hw in forwards] == [(4, 8)] * 8 + [(height // 16, width // 16)] * 5
    streams = _streams(tmp_path / "out" / "sample.mp4")
    assert (streams["video"]["width"], streams["video"]["height"]) == (width, height)
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    assert abs(float(streams["audio"]["duration"]) - float(streams["video"]["duration"])) < 0.1
    assert Image.open(tmp_path / "out" / "sample_contact.png").size == (6 * width, height)


@pytest.mark.parametrize(("extra", "message"), [
    (["--sr", "540p"], "--sr and --sr-model go together"),
    (["--sr-model", "x"], "--sr and --sr-model go together"),
    (["--sr-cfg"], "--sr-adapter and --sr-cfg need both"),
    (["--sr", "540p", "--sr-model", "tiny"], "--sr-model tiny is a preset name"),
])  # fmt: skip
def test_sample_refuses_a_half_given_sr_stage(tmp_path, capsys, extra, message):
    from hhtune.cli import EXIT_BAD_INPUT
    from hhtune.sample import main

    argv = ["--model", str(tmp_path), "--encoders", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "o"),
            "--device", "cpu", *extra]  # fmt: skip
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err


def test_recipe_validation_sr_needs_its_model():
    from hhtune.recipe import ValidationSection

    assert ValidationSection(sr="1080p", sr_model="/ckpt/1080p_sr").sr == "1080p"
    assert ValidationSection().sr is None
    with pytest.raises(ValueError, match=r"validation\.sr and validation\.sr_model go together"):
        ValidationSection(sr="540p")
    with pytest.raises(ValueError, match=r"validation\.sr_adapter needs validation\.sr"):
        ValidationSection(sr_adapter="x")
    with pytest.raises(ValueError, match="sr"):
        ValidationSection(sr="720p", sr_model="x")


def test_validation_with_sr_renders_and_the_model_card_shows_stills_at_the_delivered_size(encoders, tmp_path):
    """The training loop's validation step with validation.sr: the SR stage is loaded from the recipe, the clip is at
    the 540p size of the tiny base (32 rows x 2: 128x64), and the model card links stills of that size."""
    from types import SimpleNamespace

    import torch

    from hhtune.export.model_card import write_model_card
    from hhtune.model import HappyHorseTransformer, ModelConfig
    from hhtune.recipe import Recipe
    from hhtune.training.outputs import run_validation_step

    recipe = Recipe.model_validate({"model": {"preset": "tiny"}, "data": {"dataset": "unused"}, "validation": {
        "prompts": [PROMPT], "seconds": 0.5, "base_resolution": 32, "encoders": str(Path(encoders.video_vae).parent),
        "sr": "540p", "sr_model": "tiny"}})  # fmt: skip
    torch.manual_seed(1)
    first = HappyHorseTransformer(ModelConfig.preset("tiny"))
    accelerator = SimpleNamespace(is_main_process=True, device=torch.device("cpu"), wait_for_everyone=lambda: None)
    run_dir, logs = tmp_path / "run", []
    run_validation_step(recipe, accelerator, first, None, None, run_dir, 5, None, logs.append, sharded=False)
    assert "lip_sync_frames_without_face" in logs[0] and first.training  # put back in training mode
    width, height = sr_size("16:9", 32, "540p")
    assert (width, height) == (128, 64)
    streams = _streams(run_dir / "samples" / "step-00000005" / "prompt00.mp4")
    assert (streams["video"]["width"], streams["video"]["height"]) == (width, height) and "audio" in streams
    (run_dir / "adapter").mkdir()
    card = write_model_card(run_dir / "adapter", {"steps": 5})
    stills = [line for line in card.read_text().splitlines() if line.startswith("![validation still]")]
    contact = next(s for s in stills if "contact" in s)
    assert Image.open(run_dir / "adapter" / contact[contact.index("(") + 1 : -1]).size == (6 * width, height)


@pytest.mark.parametrize(("folder", "flags", "found"), [
    ("1080p_sr", ["--model", "{ckpt}"], "has the sr_1080p layout"),
    ("distill", ["--model", "tiny", "--random-weights", "--sr", "540p", "--sr-model", "{ckpt}"],
     "has the distill layout"),
    ("540p_sr", ["--model", "tiny", "--random-weights", "--sr", "1080p", "--sr-model", "{ckpt}"],
     "has the sr_540p layout"),
])  # fmt: skip
def test_sample_refuses_a_checkpoint_of_the_other_stage_before_loading(tmp_path, capsys, folder, flags, found):
    from hhtune.cli import EXIT_BAD_INPUT
    from hhtune.model import HappyHorseTransformer, ModelConfig, save_checkpoint
    from hhtune.sample import main

    save_checkpoint(HappyHorseTransformer(ModelConfig.preset("tiny")), tmp_path / folder)
    (tmp_path / folder / "hhtune_config.json").unlink(missing_ok=True)  # only the official folder name tells
    argv = [*(f.format(ckpt=tmp_path / folder) for f in flags), "--encoders", str(tmp_path / "no_encoders"),
            "--prompt", "x", "--out", str(tmp_path / "o"), "--device", "cpu"]  # fmt: skip
    assert main(argv) == EXIT_BAD_INPUT  # refused before the (missing) text encoder is opened
    err = capsys.readouterr().err
    assert err.startswith("error:") and found in err


def test_load_stage_model_runs_an_sr_checkpoint_as_its_variant(tmp_path):
    from hhtune.model import HappyHorseTransformer, ModelConfig, save_checkpoint
    from hhtune.sampling.super_resolution import load_stage_model

    save_checkpoint(HappyHorseTransformer(ModelConfig.preset("tiny")), tmp_path / "1080p_sr")
    (tmp_path / "1080p_sr" / "hhtune_config.json").unlink(missing_ok=True)
    model = load_stage_model(str(tmp_path / "1080p_sr"), sr="1080p")
    assert model.config.coords_style == "v1" and model.config.local_attn_layers
