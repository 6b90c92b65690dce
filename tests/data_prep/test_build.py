"""The whole build on broken files and on the sample footage: fates, buckets, resume, encoding, errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _dp_footage import SAMPLE, SENTENCE, ffmpeg, make_clip, speech_clip, write_metadata

from data_prep.build import BuildError, build, load_metadata, prepare_all
from data_prep.config import load_data_config
from hhtune.contract import FORMAT_VERSION

ROOT = Path(__file__).parents[2]
SMALL = {"min_seconds": 0.5, "max_seconds": 3.0, "base_resolution": 64, "workers": 2}


@pytest.fixture(scope="module")
def broken(tmp_path_factory, speech) -> Path:
    """A footage folder with every kind of bad input the issue lists, and good clips in odd formats."""
    d = tmp_path_factory.mktemp("footage")
    twice = d / "twice.wav.tmp"  # the sentence two times, 0.8 s apart
    ffmpeg("-i", str(speech), "-i", str(speech), "-filter_complex", "[0][1]concat=n=2:v=0:a=1", "-f", "wav", str(twice))
    speech_clip(d / "good.mp4", twice, fps=30)
    twice.unlink()
    (d / "good.srt").write_text(f"1\n00:00:00,200 --> 00:00:02,900\n{SENTENCE}.\n\n"
                                f"2\n00:00:03,200 --> 00:00:05,900\n<i>{SENTENCE}!</i>\n")  # fmt: skip
    (d / "good.caption.txt").write_text("A host in a {trigger} studio greets the audience.")
    (d / "empty.mp4").write_bytes(b"")
    data = (d / "good.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (d / "notes.docx").write_text("not footage")
    (d / "fake.mov").write_text("this is text, not a movie")
    ffmpeg("-f", "lavfi", "-i", "sine=f=300:d=2", "-c:a", "aac", str(d / "audio_only.mp4"))
    shutil.copy(speech, d / "voiceover.wav")
    make_clip(d / "no_audio.mp4", audio=None)
    make_clip(d / "silent_claims_speech.mp4", audio="anullsrc=r=16000:cl=mono")
    (d / "silent_claims_speech.txt").write_text("this transcript says something")
    speech_clip(d / "wrong_language.mp4", speech)
    (d / "wrong_language.txt").write_text("早上好，欢迎收看节目")
    speech_clip(d / "too_long.mp4", speech)
    (d / "too_long.txt").write_text(" ".join([SENTENCE] * 12))
    speech_clip(d / "late.mp4", speech)
    (d / "late.srt").write_text("1\n00:01:00,000 --> 00:01:02,000\nway after the end\n")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=96x64:r=24:d=4", "-i", str(speech), "-vf", "scale=97:61", "-c:v", "libx264",
           "-pix_fmt", "yuv444p", "-c:a", "aac", "-ar", "8000", "-ac", "1", "-shortest",
           str(d / "odd_8khz.mkv"))  # fmt: skip
    make_clip(d / "surround.mp4", audio="sine=f=440", rate=48000, channels=6)
    make_clip(d / "upright.mp4", size="96x64", audio="sine=f=500")
    ffmpeg("-i", str(d / "upright.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(d / "rotated.mp4"))
    (d / "upright.mp4").unlink()
    make_clip(d / "vp9.webm", vcodec="libvpx-vp9", acodec="libopus", rate=48000, audio="sine=f=330")
    make_clip(d / "hevc.mkv", vcodec="libx265", extra=("-x265-params", "log-level=none"))
    write_metadata(d, [
        {"file_name": "good.mp4", "language": "en", "speaker": "host", "trigger": "hhbrand"},
        {"file_name": "wrong_language.mp4", "language": "en"},
        {"file_name": "silent_claims_speech.mp4", "language": "en"},
        {"file_name": "odd_8khz.mkv", "language": "English"}, {"file_name": "late.mp4", "language": "en"},
        {"file_name": "too_long.mp4", "language": "en"},
        {"file_name": "../outside.mp4", "language": "en"}, {"file_name": "missing.mp4", "language": "en"},
        {"file_name": "vp9.webm", "language": "en", "reference_image": "../../etc/passwd"},
    ])  # fmt: skip
    (d / "odd_8khz.srt").write_text(f"1\n00:00:00,300 --> 00:00:03,600\n{SENTENCE}\n")
    return d


@pytest.fixture(scope="module")
def broken_build(broken, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "ds"
    build(broken, out, load_data_config(None, SMALL), progress=False)
    return out


def _fates(out: Path) -> dict[str, dict]:
    return {f["file"]: f for f in json.loads((out / "report.json").read_text())["files"]}


@pytest.mark.slow  # > 20 s: real builds in worker processes
def test_every_bad_input_gets_a_reason_and_the_build_goes_on(broken_build):
    fates = _fates(broken_build)
    skipped = {
        "empty.mp4": "^empty file$",
        "truncated.mp4": "not a readable media file|unusable video stream|could not be decoded",
        "notes.docx": r"not a video file \(.docx\)",
        "fake.mov": "not a readable media file",
        "audio_only.mp4": r"no video stream \(audio-only file\)",
        "voiceover.wav": r"audio-only file \(.wav\)",
        "silent_claims_speech.mp4": "claims speech but the audio is silent",
        "wrong_language.mp4": r"script \(han\) does not match the declared language 'en'",
        "late.mp4": "longer than the clip: every cue starts after its end",
        "too_long.mp4": r"longer than the clip: \d+ phonemes in",
        "../outside.mp4": "points outside the footage folder; row ignored",
        "missing.mp4": "metadata names a file that is not in the footage folder",
        "vp9.webm": "points outside the footage folder",
    }
    for name, pattern in skipped.items():
        assert fates[name]["fate"] == "skipped", (name, fates[name])
        assert re.search(pattern, fates[name]["reason"]), (name, fates[name]["reason"])
    for name in ("good.mp4", "odd_8khz.mkv", "surround.mp4", "rotated.mp4", "hevc.mkv", "no_audio.mp4"):
        assert fates[name]["fate"] in ("used", "split"), (name, fates[name])
    assert fates["good.mp4"]["fate"] == "split" and fates["good.mp4"]["clips"] == 2
    assert fates["good.mp4"]["reason"] == "split into 2 clips"
    notes = {k: " | ".join(v["notes"]) for k, v in fates.items()}
    assert "low audio sample rate 8000 Hz" in notes["odd_8khz.mkv"] and "odd frame size 97x61" in notes["odd_8khz.mkv"]
    assert "6-channel audio" in notes["surround.mp4"] and "down-mixed to stereo" in notes["surround.mp4"]
    assert re.search("rotation (90|270) degrees applied", notes["rotated.mp4"])
    assert "no transcript sidecar and no asr_model" in notes["surround.mp4"]
    assert "no transcribed words (ambient): kept whole as clips of equal length" in notes["surround.mp4"]
    assert "no audio track: its clips train the picture only" in notes["no_audio.mp4"]
    assert fates["no_audio.mp4"]["kind"] == "silent video" and fates["surround.mp4"]["kind"] == "ambient"
    assert "30 fps resampled to 25 fps" in notes["good.mp4"] and fates["good.mp4"]["alignment_method"] == "dtw"
    totals = json.loads((broken_build / "report.json").read_text())["totals"]
    assert totals["files"] == len(fates) == 19 and totals["skipped"] == len(skipped)


@pytest.mark.slow  # > 20 s: real builds in worker processes
def test_clips_land_in_buckets_with_captions_and_masks(broken_build):
    import datasets

    ds = datasets.load_from_disk(str(broken_build / "dataset"))
    rows: dict[str, list[dict]] = {}
    for r in ds:
        rows.setdefault(r["source_file"], []).append(r)
    rot = rows["rotated.mp4"][0]
    assert rot["bucket"] == "9:16" and (rot["width"], rot["height"]) == (64, 128)
    assert rows["odd_8khz.mkv"][0]["bucket"] == "16:9" and rows["hevc.mkv"][0]["bucket"] == "4:3"  # 1.59 and 1.5
    assert all((r["num_frames"] - 1) % 4 == 0 and 0.5 <= r["num_frames"] / 25 <= 3.0 for r in ds)
    good = rows["good.mp4"]
    assert [g["language"] for g in good] == ["en", "en"] and good[0]["end_s"] <= good[1]["start_s"]
    first = good[0]["caption"]
    # description from the caption sidecar, trigger at its {trigger} placeholder, then Dialogue and Background Sound
    assert first.startswith("A host in a hhbrand studio greets the audience. Host says in English, \"")
    assert '\n\nDialogue:\n<host, English>: "' in first
    assert first.endswith("Background Sound:\n<No prominent background sound>")
    # one cue per clip, cut in the pause between them; a cue wholly inside a clip keeps its punctuation
    assert [g["transcript"] for g in good] == [f"{SENTENCE}.", f"{SENTENCE}!"]
    for g in good:
        m = g["speech_mask"]
        assert len(m) == g["num_frames"] and 0 < sum(m) <= len(m)
        textgrid = (broken_build / "alignments" / f"{g['clip_id']}.TextGrid").read_text()
        assert textgrid.startswith('File type = "ooTextFile"')
        words = json.loads((broken_build / "alignments" / f"{g['clip_id']}.json").read_text())["words"]
        assert words and all(0 <= w["start"] < w["end"] <= g["num_frames"] / 25 + 1e-6 for w in words)
    surround = rows["surround.mp4"][0]
    assert "Dialogue:" not in surround["caption"] and surround["transcript"] == ""
    sources = json.loads((broken_build / "manifest.json").read_text())["clip_sources"]
    assert sources[surround["clip_id"]] == {"alignment": "none", "speech_mask": "silero", "transcript": "none",
                                            "language": "none", "language_confidence": 0.0}  # a tone: no speech heard
    assert sum(surround["speech_mask"]) == 0
    assert all(sources[g["clip_id"]] == {"alignment": "dtw", "speech_mask": "phonemes (dtw) & silero",
                                         "transcript": "srt", "language": "metadata", "language_confidence": 1.0}
               for g in good)  # fmt: skip
    html = (broken_build / "report.html").read_text()
    assert "data:image/png;base64" in html and "no audio track" in html and "split into 2 clips" in html
    assert "matplotlib" in html


@pytest.mark.slow  # > 20 s: real builds in worker processes
def test_clip_audio_is_stereo_at_51200(broken_build):
    import datasets

    ds = datasets.load_from_disk(str(broken_build / "dataset"))
    by_file = {r["source_file"]: r["clip_id"] for r in ds}
    for name in ("surround.mp4", "odd_8khz.mkv", "good.mp4"):
        clip = np.load(broken_build / ".work" / "clips" / f"{by_file[name]}.npz")
        n = next(r["num_frames"] for r in ds if r["clip_id"] == by_file[name])
        assert clip["audio"].shape == (2, n * 2048) and clip["audio"].dtype == np.float32
        assert np.abs(clip["audio"]).max() > 0.01


@pytest.mark.slow  # > 20 s: real builds in worker processes
def test_resume_after_a_kill_redoes_only_the_unfinished(broken, tmp_path):
    """SIGKILL a real build after its second finished file, then run it again."""
    out = tmp_path / "ds"
    units = out / ".work" / "units"
    cmd = [sys.executable, "-m", "data_prep", "prepare", str(broken), "--out", str(out), "--workers", "1",
           "--no-progress", "--config", str(tmp_path / "d.yaml")]  # fmt: skip
    (tmp_path / "d.yaml").write_text("min_seconds: 0.5\nmax_seconds: 2.0\nbase_resolution: 64\n")
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (units.is_dir() and len(list(units.glob("*.json"))) >= 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in units.glob("*.json")}
    assert 2 <= len(done_before) < 15, len(done_before)
    for p in units.glob("*.json"):
        json.loads(p.read_text())  # every unit under its final name is whole
    cfg = load_data_config(tmp_path / "d.yaml", {"workers": 2})
    result = prepare_all(broken, out, cfg, progress=False)
    assert len(result) == 19
    for name, mtime in done_before.items():
        assert (units / name).stat().st_mtime_ns == mtime  # finished units were not redone
    assert not list((out / ".work").rglob("*.tmp"))  # leftovers of the killed write are gone
    assert len(list(units.glob("*.json"))) == 15  # one per candidate video file


def test_worker_failure_mid_build_then_resume(tmp_path, speech, monkeypatch):
    """A build that dies after N files (an exception out of the pool) resumes with the N units kept."""
    import data_prep.build as b

    d = tmp_path / "f"
    d.mkdir()
    for i in range(3):
        make_clip(d / f"c{i}.mp4", seconds=1.2)
    cfg = load_data_config(None, {**SMALL, "workers": 1})
    real = b.prepare_file
    calls = []

    def dying(*a, **k):
        if len(calls) == 2:
            raise RuntimeError("worker killed")
        calls.append(a[1])
        return real(*a, **k)

    monkeypatch.setattr(b, "ProcessPoolExecutor", _InlinePool)
    monkeypatch.setattr(b, "prepare_file", dying)
    with pytest.raises(RuntimeError, match="worker killed"):
        prepare_all(d, tmp_path / "ds", cfg, progress=False)
    assert len(list((tmp_path / "ds" / ".work" / "units").glob("*.json"))) == 2
    monkeypatch.setattr(b, "prepare_file", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    units = prepare_all(d, tmp_path / "ds", cfg, progress=False)
    assert calls == ["c0.mp4", "c1.mp4", "c2.mp4"] and all(u.fate == "used" for u in units)
    # an edited sidecar makes its file stale: only that file is done again
    (d / "c1.txt").write_text("hello")
    write_metadata(d, [{"file_name": "c1.mp4", "language": "en"}])
    prepare_all(d, tmp_path / "ds", cfg, progress=False)
    assert calls[3:] == ["c1.mp4"]


class _InlinePool:
    """A ProcessPoolExecutor stand-in that runs submissions in this process (so monkeypatches apply)."""

    def __init__(self, *a, **k) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a) -> None:
        pass

    def submit(self, fn, *a, **k):
        from concurrent.futures import Future

        f: Future = Future()
        try:
            f.set_result(fn(*a, **k))
        except Exception as e:  # handed to the caller through the future, as a pool would
            f.set_exception(e)
        return f


def test_changed_settings_refuse_the_stale_cache(tmp_path, monkeypatch):
    import data_prep.build as b

    monkeypatch.setattr(b, "ProcessPoolExecutor", _InlinePool)  # no worker start-up: this is about the cache
    d = tmp_path / "f"
    d.mkdir()
    make_clip(d / "a.mp4", seconds=1.2)
    prepare_all(d, tmp_path / "ds", load_data_config(None, SMALL), progress=False)
    other = load_data_config(None, {**SMALL, "base_resolution": 128})
    with pytest.raises(BuildError, match=r"built from other footage or settings.*--rebuild"):
        prepare_all(d, tmp_path / "ds", other, progress=False)
    assert prepare_all(d, tmp_path / "ds", other, rebuild=True, progress=False)[0].clips[0].height == 128


def test_metadata_csv_and_bad_rows(tmp_path):
    d = tmp_path / "f"
    (d / "sub").mkdir(parents=True)
    make_clip(d / "sub" / "a.mp4", seconds=1.0)
    (d / "metadata.csv").write_text("file_name,language,caption\nsub/a.mp4,de,Ein Produkt.\n/etc/passwd,en,\n")
    meta, refused = load_metadata(d)
    assert meta == {"sub/a.mp4": {"file_name": "sub/a.mp4", "language": "de", "caption": "Ein Produkt."}}
    assert [r.file for r in refused] == ["/etc/passwd"] and "outside the footage folder" in refused[0].reason
    (d / "metadata.jsonl").write_text('{"file_name": "sub/a.mp4"}\n{not json\n')
    with pytest.raises(BuildError, match=r"metadata.jsonl:2: not valid JSON"):
        load_metadata(d)


def test_data_config_errors_name_the_key(tmp_path):
    p = tmp_path / "d.yaml"
    p.write_text("base_resolutoin: 256\n")
    with pytest.raises(ValueError, match=r"base_resolutoin: unknown key; allowed keys here: .*base_resolution"):
        load_data_config(p)
    with pytest.raises(ValueError, match="base_resolution = 100: Input should be a multiple of 32"):
        load_data_config(None, {"base_resolution": 100})
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        load_data_config(None, {"language": "xx"})
    with pytest.raises(ValueError, match=r"max_seconds .* must be >= min_seconds"):
        load_data_config(None, {"min_seconds": 3, "max_seconds": 2})
    p.write_text("encoders: {video_vae: a, audio_vae: b, text_encodr: c}\n")
    with pytest.raises(ValueError, match="text_encodr"):
        load_data_config(p)
    from data_prep.__main__ import main

    p.write_text("workerz: 3\n")
    assert main(["prepare", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(p)]) == 2


@pytest.mark.slow  # > 20 s: real builds in worker processes
def test_sample_footage_all_languages_then_encoded(tmp_path):
    """Stages 1-7 on the shipped footage (seven languages), then 8-9 on a part of it with the tiny encoders."""
    import datasets

    from data_prep.dataset import load_dataset_dir
    from data_prep.encode import StaleLatentsError, encode_clips
    from hhtune.encoders import build_tiny_encoders

    cfg = load_data_config(ROOT / "recipes" / "quickstart_data.yaml")
    units = prepare_all(SAMPLE, tmp_path / "all", cfg, progress=False)
    (script,) = [u for u in units if u.file == "make_sample_footage.py"]  # every file has a fate, this one too
    assert script.fate == "skipped" and script.reason.startswith("not a video file (.py)")
    units = [u for u in units if u is not script]
    assert all(u.fate in ("used", "split") for u in units), [(u.file, u.reason) for u in units]
    assert {u.language for u in units} == {"en", "zh", "yue", "ja", "ko", "de", "fr"}
    assert all(u.alignment_method == "dtw" and u.clips for u in units), [(u.file, u.alignment_method) for u in units]
    for u in units:
        for c in u.clips:
            assert c.transcript and "Dialogue:\n<a presenter in a studio, " in c.caption
    zh = [c.caption for u in units for c in u.clips if c.language == "zh"]
    assert all(re.search(r'Mandarin>: "\S( \S)+"', c) for c in zh), zh  # CJK characters spaced, as the official prompts

    footage = tmp_path / "footage"
    footage.mkdir()
    for f in SAMPLE.glob("zh_presenter.*"):  # one file (three clips of one shape: a batch) keeps the CPU test short
        shutil.copy(f, footage / f.name)
    write_metadata(footage, [json.loads(line) for line in (SAMPLE / "metadata.jsonl").read_text().splitlines()
                             if '"zh_presenter.mp4"' in line])  # fmt: skip
    out = build(footage, tmp_path / "ds", cfg, encode=True, progress=False)
    d = load_dataset_dir(out, require_encoded=True)
    ds = d.dataset.with_format("numpy")
    assert d.manifest["encoded"] and d.manifest["format_version"] == FORMAT_VERSION
    assert len(ds) == d.manifest["clips"] >= 2
    for r in ds:
        f, t = r["num_frames"], (r["num_frames"] - 1) // 4 + 1
        assert r["video_latents"].shape == (48, t, r["height"] // 16, r["width"] // 16)
        assert r["audio_latents"].shape == (f, 64) and r["text_embeds"].shape[1] == 32
        assert r["reference_latents"].shape == (48, 1, r["height"] // 16, r["width"] // 16)
    assert datasets.load_from_disk(str(out / "dataset")).num_rows == len(ds)
    # a second build reuses every latent; other encoders are refused, not mixed in
    latents = sorted((out / ".work" / "latents").glob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in latents]
    build(footage, out, cfg, encode=True, progress=False)
    assert [p.stat().st_mtime_ns for p in latents] == stamps
    other = build_tiny_encoders(tmp_path / "other", seed=1)
    from data_prep.build import load_units

    with pytest.raises(StaleLatentsError, match=r"latents from other encoders.*--reencode"):
        encode_clips(load_units(out), out / ".work", other, cfg, progress=False)
    with pytest.raises(Exception, match="built with other settings or encoders"):
        load_dataset_dir(out, fingerprint="0" * 16)
    # --reencode with the other encoders: the latents' contents change, and the manifest names the new encoders
    from safetensors.numpy import load_file

    from hhtune.encoders import encoders_fingerprint

    before = {p.name: load_file(p) for p in latents}
    old_manifest = json.loads((out / "manifest.json").read_text())
    cfg2 = cfg.model_copy(update={"tiny_encoders": False, "encoders": str(tmp_path / "other")})
    build(footage, out, cfg2, encode=True, progress=False, reencode=True)
    after = {p.name: load_file(p) for p in sorted((out / ".work" / "latents").glob("*.safetensors"))}
    assert set(after) == set(before)
    for name, tensors in after.items():
        assert not np.array_equal(tensors["video_latents"], before[name]["video_latents"]), name
        assert not np.array_equal(tensors["audio_latents"], before[name]["audio_latents"]), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["encoders_fingerprint"] == encoders_fingerprint(other) != old_manifest["encoders_fingerprint"]
    assert manifest["fingerprint"] != old_manifest["fingerprint"] and manifest["clips"] == old_manifest["clips"]
    assert set(manifest["clip_sources"]) == {r["clip_id"] for r in ds}
    assert all(v["speech_mask"].startswith("phonemes") for v in manifest["clip_sources"].values())
    from data_prep.__main__ import main

    assert main(["check", str(out)]) == 0 and main(["report", str(out)]) == 0


def test_acoustic_model_gives_ctc_alignment(tmp_path, speech, monkeypatch):
    """With an acoustic model configured, words are aligned by CTC (a tiny random model: times, not quality)."""
    import data_prep.build as b
    from hhtune.speech.align import build_tiny_recognizer

    d = tmp_path / "f"
    d.mkdir()
    speech_clip(d / "a.mp4", speech)
    (d / "a.srt").write_text(f"1\n00:00:00,300 --> 00:00:03,500\n{SENTENCE}\n")
    write_metadata(d, [{"file_name": "a.mp4", "language": "en"}])
    model = build_tiny_recognizer(tmp_path / "am", seed=0)
    monkeypatch.setattr(b, "ProcessPoolExecutor", _InlinePool)
    units = prepare_all(d, tmp_path / "ds", load_data_config(None, {**SMALL, "acoustic_model": str(model)}),
                        progress=False)
    assert units[0].alignment_method == "ctc", units[0]
    assert not any("fell back" in n for n in units[0].notes) and units[0].clips
    labels = [w["label"] for c in units[0].clips for w in json.loads(c.alignment)["words"]]
    it = iter(SENTENCE.split())
    assert labels and all(label in it for label in labels)  # random weights: words in order, not all kept
