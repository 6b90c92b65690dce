"""The endpoint captioner against a small OpenAI-shaped HTTP server on 127.0.0.1, and the stage's cache around it."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile
from test_caption_answer import DESCRIPTION

from data_prep.captioner import CaptionerError
from data_prep.captioner.endpoint import EndpointCaptioner
from data_prep.captioner.media import ClipMedia
from data_prep.captioner.stage import CACHE, caption_units
from data_prep.captions import build_caption
from data_prep.config import CaptionerConfig, DataConfig
from data_prep.units import Clip, Unit

GOOD = f"DESCRIPTION: {DESCRIPTION}\nSPEAKER: woman in grey blazer\nBACKGROUND SOUND: air conditioner hum"


class _Server:
    """Answers POST /v1/chat/completions with ``replies`` in turn: a string (the answer), an int (an HTTP error
    status) or a float (seconds to stall before answering GOOD). Every request body is kept in ``requests``."""

    def __init__(self, replies: list):
        self.replies, self.requests = list(replies), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                outer.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                reply = outer.replies.pop(0) if outer.replies else GOOD
                if isinstance(reply, float):
                    time.sleep(reply)
                    reply = GOOD
                if isinstance(reply, int):
                    body, status = json.dumps({"error": {"message": "overloaded"}}).encode(), reply
                else:
                    status = 200
                    body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                       "choices": [{"index": 0, "finish_reason": "stop",
                                                    "message": {"role": "assistant", "content": reply}}]}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(request):
    s = _Server(getattr(request, "param", []))
    yield s
    s.close()


def _media(n_frames=3, audio=True) -> ClipMedia:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (32, 48, 3), dtype=np.uint8) for _ in range(n_frames)]
    return ClipMedia(frames, (0.1 * rng.standard_normal(16000)).astype(np.float32) if audio else None)


def test_request_carries_frames_audio_and_prompt(server):
    cap = EndpointCaptioner(CaptionerConfig(model="qwen-omni", endpoint=server.url, retries=0))
    assert cap.answer([_media()], "PROMPT TEXT") == [GOOD]
    (req,) = server.requests
    assert req["model"] == "qwen-omni"
    content = req["messages"][0]["content"]
    images = [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
    assert len(images) == 3 and all(u.startswith("data:image/jpeg;base64,") for u in images)
    (audio,) = [c["input_audio"] for c in content if c["type"] == "input_audio"]
    wave, rate = soundfile.read(io.BytesIO(base64.b64decode(audio["data"])))
    assert audio["format"] == "wav" and rate == 16000 and len(wave) == 16000
    assert content[-1] == {"type": "text", "text": "PROMPT TEXT"}


def test_picture_only_model_gets_no_audio(server):
    cap = EndpointCaptioner(CaptionerConfig(model="qwen-vl", endpoint=server.url, audio=False, retries=0))
    cap.answer([_media()], "p")
    assert not [c for c in server.requests[0]["messages"][0]["content"] if c["type"] == "input_audio"]


@pytest.mark.parametrize("server", [[503, 500]], indirect=True)
def test_errors_are_retried(server):
    cap = EndpointCaptioner(CaptionerConfig(model="m", endpoint=server.url, retries=2))
    assert cap.answer([_media()], "p") == [GOOD]
    assert len(server.requests) == 3


@pytest.mark.parametrize("server", [[503, 503, 503]], indirect=True)
def test_errors_after_the_retries_name_the_url(server):
    cap = EndpointCaptioner(CaptionerConfig(model="m", endpoint=server.url, retries=1))
    with pytest.raises(CaptionerError, match=rf"{server.url} failed after 2 tries: InternalServerError|"
                                             rf"{server.url} failed after 2 tries: APIStatusError"):
        cap.answer([_media()], "p")
    assert len(server.requests) == 2


@pytest.mark.parametrize("server", [[3.0, 3.0]], indirect=True)
def test_timeouts_are_retried_then_reported(server):
    cap = EndpointCaptioner(CaptionerConfig(model="m", endpoint=server.url, retries=1, timeout_s=0.3))
    with pytest.raises(CaptionerError, match="failed after 2 tries: APITimeoutError"):
        cap.answer([_media()], "p")
    assert len(server.requests) == 2


def test_unreachable_endpoint_names_the_url():
    url = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    cap = EndpointCaptioner(CaptionerConfig(model="m", endpoint=url, retries=0))
    with pytest.raises(CaptionerError, match=f"{url} failed after 1 tries: APIConnectionError"):
        cap.answer([_media()], "p")


def _clip(out, k: int, lines: list[str]) -> Clip:
    rng = np.random.default_rng(k)
    (out / ".work" / "clips").mkdir(parents=True, exist_ok=True)
    np.savez(out / ".work" / "clips" / f"c{k}.npz", frames=rng.integers(0, 255, (9, 32, 48, 3), dtype=np.uint8),
             audio=(0.1 * rng.standard_normal((2, 51200))).astype(np.float32))
    caption = build_caption("A person speaks to the camera.", lines=lines, speaker="the speaker", language="en")
    return Clip(clip_id=f"c{k}", source_file="a.mp4", start_s=0.0, end_s=0.36, language="en", caption=caption,
                transcript=" ".join(lines), alignment="{}", alignment_method="none", speech_mask=(0.0,) * 9,
                mask_source="energy", bucket="16:9", width=48, height=32, num_frames=9, speaker="the speaker")


def _units(out):
    return [Unit("a.mp4", fate="split", clips=[_clip(out, 0, ["Hello there."]), _clip(out, 1, ["Good bye."])])]


@pytest.mark.parametrize("server", [[GOOD, 500, 500]], indirect=True)
def test_answers_made_stay_cached_when_the_endpoint_fails_later(server, tmp_path):
    cfg = DataConfig(captioner=CaptionerConfig(model="m", endpoint=server.url, retries=1, frames=2))
    with pytest.raises(CaptionerError, match=server.url):
        caption_units(_units(tmp_path), tmp_path, tmp_path, cfg, {}, progress=False)
    assert len(list((tmp_path / CACHE).glob("*.json"))) == 1
    server.requests.clear()
    units = caption_units(_units(tmp_path), tmp_path, tmp_path, cfg, {}, progress=False)
    assert len(server.requests) == 1  # only the clip not yet captioned is asked again
    first = units[0].clips[0]
    assert first.caption.startswith(DESCRIPTION)
    assert '<woman in grey blazer, English>: "Hello there."' in first.caption  # transcript line, captioner speaker
    assert first.caption.endswith("Background Sound:\n<air conditioner hum>")
    assert first.speaker == "woman in grey blazer"
    server.requests.clear()
    caption_units(_units(tmp_path), tmp_path, tmp_path, cfg, {}, progress=False)
    assert server.requests == []  # a rebuild asks nothing


@pytest.mark.parametrize("server", [["Sorry, I can't help with that."] * 2], indirect=True)
def test_metadata_description_wins_and_unusable_answers_keep_it_with_a_note(server, tmp_path):
    cfg = DataConfig(captioner=CaptionerConfig(model="m", endpoint=server.url, retries=0, frames=2))
    units = caption_units(_units(tmp_path), tmp_path, tmp_path, cfg, {"a.mp4": {"caption": "Mine."}}, progress=False)
    assert server.requests == [] and units[0].clips == _units(tmp_path)[0].clips
    units = caption_units(_units(tmp_path), tmp_path, tmp_path, cfg, {}, progress=False)
    assert len(server.requests) == 2
    assert units[0].clips == _units(tmp_path)[0].clips
    assert "c0: captioner answer not used (a refusal); kept the metadata description" in units[0].notes


def test_a_clip_whose_pixels_or_sound_changed_is_captioned_again(server, tmp_path):
    cfg = DataConfig(captioner=CaptionerConfig(model="m", endpoint=server.url, retries=0, frames=2))
    caption_units(_units(tmp_path), tmp_path, tmp_path, cfg, {}, progress=False)
    assert len(server.requests) == 2
    units = _units(tmp_path)  # the clips cut again, the same
    npz = tmp_path / ".work" / "clips" / "c1.npz"
    with np.load(npz) as data:
        frames, audio = data["frames"], data["audio"]
    np.savez(npz, frames=frames, audio=audio * 0.5)  # c1: the same picture, another sound
    server.requests.clear()
    caption_units(units, tmp_path, tmp_path, cfg, {}, progress=False)
    assert len(server.requests) == 1


def test_frames_are_sampled_across_the_clip_and_sound_resampled_to_16k(tmp_path):
    from data_prep.captioner.media import load_clip_media

    frames = np.stack([np.full((8, 8, 3), i, np.uint8) for i in range(9)])
    np.savez(tmp_path / "c.npz", frames=frames, audio=np.ones((2, 51200 * 9 // 25), np.float32) * 0.1)
    media = load_clip_media(tmp_path / "c.npz", 3)
    assert [int(f[0, 0, 0]) for f in media.frames] == [1, 4, 7]
    assert media.audio.shape == (16000 * 9 // 25,)
