"""The whole build on the sample footage and on broken files: fates, resume, encoding, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from data_prep.build import BuildError, build, prepare_all
from data_prep.config import load_data_config

SAMPLE = Path(__file__).parents[2] / "data_prep" / "sample_footage"


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def _clip(path: Path, *, size="96x64", seconds=2.0, audio="sine=f=220", rate=16000, channels=1, extra=()):
    inputs = ["-f", "lavfi", "-i", f"testsrc2=s={size}:r=25:d={seconds}"]
    maps = []
    if audio:
        inputs += ["-f", "lavfi", "-i", f"{audio}:d={seconds}" if "=" in audio else f"{audio}=d={seconds}"]
        maps = ["-c:a", "aac", "-ar", str(rate), "-ac", str(channels)]
    _ffmpeg(*inputs, "-c:v", "libx264", "-pix_fmt", "yuv420p", *maps, *extra, "-shortest", str(path))


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    """A footage folder with every kind of bad input the issue lists, plus two good clips."""
    d = tmp_path_factory.mktemp("footage")
    speech = d / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(speech), "good morning and welcome to the show"], check=True)
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=s=96x64:r=30:d=3", "-i", str(speech), "-c:v", "libx264", "-pix_fmt",
            "yuv420p", "-c:a", "aac", "-shortest", str(d / "good.mp4"))  # fmt: skip
    (d / "good.txt").write_text("good morning and welcome to the show")
    (d / "empty.mp4").write_bytes(b"")
    data = (d / "good.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (d / "notes.docx").write_text("not footage")
    (d / "fake.mov").write_text("this is text, not a movie")
    _ffmpeg("-f", "lavfi", "-i", "sine=f=300:d=2", "-c:a", "aac", str(d / "audio_only.mp4"))
    _clip(d / "no_audio.mp4", audio=None)
    _clip(d / "silent_claims_speech.mp4", audio="anullsrc=r=16000:cl=mono")
    (d / "silent_claims_speech.txt").write_text("this transcript says something")
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=s=96x64:r=25:d=3", "-i", str(speech), "-c:v", "libx264", "-pix_fmt",
            "yuv420p", "-c:a", "aac", "-shortest", str(d / "wrong_language.mp4"))  # fmt: skip
    (d / "wrong_language.txt").write_text("早上好，欢迎收看节目")
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=s=97x61:r=24:d=2", "-i", str(speech), "-c:v", "libx264", "-pix_fmt",
            "yuv444p", "-c:a", "aac", "-ar", "8000", "-ac", "1", "-shortest", str(d / "odd_8khz.mkv"))  # fmt: skip
    _clip(d / "surround.mp4", audio="sine=f=440", rate=48000, channels=6)
    _clip(d / "upright.mp4", size="96x64", audio="sine=f=500")
    _ffmpeg("-i", str(d / "upright.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(d / "rotated.mp4"))
    (d / "upright.mp4").unlink()
    (d / "late.srt").write_text("1\n00:01:00,000 --> 00:01:02,000\nway after the end\n")
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=s=96x64:r=25:d=3", "-i", str(speech), "-c:v", "libx264", "-pix_fmt",
            "yuv420p", "-c:a", "aac", "-shortest", str(d / "late.mp4"))  # fmt: skip
    meta = [{"file_name": "good.mp4", "language": "en", "speaker": "host", "caption": "A host greets the audience."},
            {"file_name": "wrong_language.mp4", "language": "en"}, {"file_name": "silent_claims_speech.mp4", "language": "en"},
            {"file_name": "odd_8khz.mkv", "language": "en"}, {"file_name": "late.mp4", "language": "en"}]  # fmt: skip
    (d / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    return d


@pytest.fixture(scope="module")
def broken_build(broken, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "ds"
    cfg = load_data_config(None, {"min_seconds": 0.5, "max_seconds": 2.0, "base_resolution": 64, "workers": 2})
    build(broken, out, cfg, progress=False)
    return out


def _fates(out: Path) -> dict[str, dict]:
    return {f["file"]: f for f in json.loads((out / "report.json").read_text())["files"]}


def test_every_bad_input_gets_a_reason_and_the_build_goes_on(broken_build):
    fates = _fates(broken_build)
    expect = {
        "empty.mp4": "empty file",
        "truncated.mp4": "not a readable media file|unusable video stream|audio could not be decoded",
        "notes.docx": r"not a video file \(.docx\)",
        "fake.mov": "not a readable media file",
        "audio_only.mp4": "no video stream \\(audio-only file\\)",
        "no_audio.mp4": "no audio track",
        "silent_claims_speech.mp4": "claims speech but the audio is silent",
        "wrong_language.mp4": "does not match the declared language 'en'",
        "late.mp4": "every transcript cue starts after the clip ends",
    }
    import re

    for name, pattern in expect.items():
        assert fates[name]["fate"] == "skipped", (name, fates[name])
        assert re.search(pattern, fates[name]["reason"]), (name, fates[name]["reason"])
    for name in ("good.mp4", "odd_8khz.mkv", "surround.mp4", "rotated.mp4"):
        assert fates[name]["fate"] == "used", (name, fates[name])
    assert any("low audio sample rate 8000" in n for n in fates["odd_8khz.mkv"]["notes"])
    assert any("6-channel audio" in n for n in fates["surround.mp4"]["notes"])
    assert any(re.search("rotation (90|270) degrees applied", n) for n in fates["rotated.mp4"]["notes"])
    assert any("speech unknown" in n for n in fates["surround.mp4"]["notes"])


def test_rotation_and_odd_sizes_land_in_buckets(broken_build):
    import datasets

    ds = datasets.load_from_disk(str(broken_build / "dataset"))
    rows = {r["source_file"]: r for r in ds}
    assert rows["rotated.mp4"]["bucket"] == "9:16" and (rows["rotated.mp4"]["width"], rows["rotated.mp4"]["height"]) == (64, 128)
    assert rows["odd_8khz.mkv"]["bucket"] == "16:9"
    assert all((r["num_frames"] - 1) % 4 == 0 for r in ds)
    good = rows["good.mp4"]
    assert good["language"] == "en" and "Dialogue:\n<host, English>:" in good["caption"]
    assert good["caption"].startswith("A host greets the audience.") and "Background Sound:" in good["caption"]
    assert len(good["speech_mask"]) == good["num_frames"] and 0 < sum(good["speech_mask"]) < good["num_frames"]
    assert (broken_build / "alignments" / f"{good['clip_id']}.TextGrid").is_file()
    html = (broken_build / "report.html").read_text()
    assert "data:image/png;base64" in html and "no audio track" in html


def test_resume_after_a_kill_redoes_only_the_unfinished(broken, tmp_path):
    """SIGKILL a real build after its first finished file, then run it again."""
    import os
    import signal
    import sys
    import time

    out = tmp_path / "ds"
    units = out / ".work" / "units"
    cmd = [sys.executable, "-m", "data_prep", "prepare", str(broken), "--out", str(out), "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parents[2], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (units.is_dir() and len(list(units.glob("*.json"))) >= 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in units.glob("*.json")}
    assert 2 <= len(done_before) < 12, len(done_before)
    for p in units.glob("*.json"):
        json.loads(p.read_text())  # every unit under its final name is whole
    cfg = load_data_config(None, {"workers": 1})
    result = prepare_all(broken, out, cfg, progress=False)
    assert len(result) == 14
    for name, mtime in done_before.items():
        assert (units / name).stat().st_mtime_ns == mtime  # finished units were not redone
    assert not list((out / ".work").rglob("*.tmp"))  # leftovers of the killed write are gone


def test_changed_settings_refuse_the_stale_cache(broken, tmp_path):
    cfg = load_data_config(None, {"min_seconds": 0.5, "max_seconds": 2.0, "base_resolution": 64, "workers": 2})
    prepare_all(broken, tmp_path / "ds", cfg, progress=False)
    other = load_data_config(None, {"min_seconds": 0.5, "max_seconds": 2.0, "base_resolution": 128, "workers": 2})
    with pytest.raises(BuildError, match="built from other footage or settings.*--rebuild"):
        prepare_all(broken, tmp_path / "ds", other, progress=False)


def test_metadata_paths_cannot_escape_the_footage_folder(tmp_path):
    d = tmp_path / "f"
    d.mkdir()
    (d / "metadata.jsonl").write_text(json.dumps({"file_name": "../secret.mp4"}) + "\n")
    with pytest.raises(BuildError, match="points outside the footage folder"):
        prepare_all(d, tmp_path / "out", load_data_config(None), progress=False)


def test_data_config_errors_name_the_key(tmp_path):
    p = tmp_path / "d.yaml"
    p.write_text("base_resolutoin: 256\n")
    with pytest.raises(ValueError, match="base_resolutoin: unknown key; allowed keys here: .*base_resolution"):
        load_data_config(p)
    with pytest.raises(ValueError, match="base_resolution = 100: Input should be a multiple of 32"):
        load_data_config(None, {"base_resolution": 100})
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        load_data_config(None, {"language": "xx"})


def test_sample_footage_encoded_with_tiny_encoders(tmp_path):
    """Stages 1-9 on the shipped footage: seven languages, latents of the right shapes, reloadable Arrow."""
    import datasets

    footage = tmp_path / "footage"
    shutil.copytree(SAMPLE, footage)
    cfg = load_data_config(Path(__file__).parents[2] / "recipes" / "quickstart_data.yaml")
    out = build(footage, tmp_path / "ds", cfg, encode=True, progress=False)
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["used"] == 7 and report["totals"]["skipped"] == 0
    assert set(report["by_language"]) == {"en", "zh", "yue", "ja", "ko", "de", "fr"}
    ds = datasets.load_from_disk(str(out / "dataset")).with_format("numpy")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["encoded"] and manifest["format_version"] == 1 and len(ds) == manifest["clips"]
    for r in ds:
        f, t = r["num_frames"], (r["num_frames"] - 1) // 4 + 1
        assert r["video_latents"].shape == (48, t, r["height"] // 16, r["width"] // 16)
        assert r["audio_latents"].shape == (f, 64) and r["text_embeds"].shape[1] == 32
        assert r["reference_latents"].shape == (48, 1, r["height"] // 16, r["width"] // 16)
    # a second build reuses everything; different encoders are detected and re-encoded
    before = sorted((out / ".work" / "latents").glob("*.safetensors"))
    build(footage, out, cfg, encode=True, progress=False)
    assert sorted((out / ".work" / "latents").glob("*.safetensors")) == before
    shutil.rmtree(out / "encoders")
    from hhtune.encoders import build_tiny_encoders

    build_tiny_encoders(out / "encoders", seed=1)
    from data_prep.encode import encode_clips

    units = [json.loads(p.read_text()) for p in (out / ".work" / "units").glob("*.json")]
    encode_clips(units, out / ".work", build_tiny_encoders(out / "encoders", seed=1), cfg, progress=False)
    stamp = json.loads((out / ".work" / "latents" / "encoders.json").read_text())
    from hhtune.encoders import encoders_fingerprint

    assert stamp["fingerprint"] == encoders_fingerprint(build_tiny_encoders(out / "encoders", seed=1))
