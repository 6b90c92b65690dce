"""The mouth in every latent frame (data config ``mouth_regions``): found on a real photograph placed in a real video
file, stored on the latent grid through the bucket's resize and crop, counted where there is no face, drawn in the
report."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from talking_face import envelope, face, open_mouth

from data_prep.config import load_data_config
from data_prep.dataset import load_dataset_dir, write_dataset
from data_prep.mouth import latent_box, searched_frames
from data_prep.prepare import prepare_file
from data_prep.report import MOUTH_COLOUR, thumbnail_strip, write_report
from hhtune.contract import MOUTH_BOXES, NO_MOUTH
from hhtune.dataset import DatasetError
from hhtune.sampling.generate import OUTPUT_AUDIO_RATE, write_mp4

# The footage: 640x360 (16:9), the astronaut photograph scaled to 360x360 at x = 200..560, frames 20-29 blank.
_LEFT, _SIDE, _BLANK = 200, 360, range(20, 30)
# dlib's lip landmarks in the 512x512 photograph: mouth corners at x 199 and 247, the line between the lips at y 146.
_CORNERS, _LIPS_Y = (199, 247), 146


def _footage_frame(amount: float) -> np.ndarray:
    frame = np.full((360, 640, 3), 90, np.uint8)
    photo = Image.fromarray(open_mouth(face(), amount)).resize((_SIDE, _SIDE), Image.BILINEAR)
    frame[:, _LEFT : _LEFT + _SIDE] = np.asarray(photo)
    return frame


def _in_bucket(x: float, y: float) -> tuple[float, float]:
    """A point of the photograph in the 480x256 bucket: the footage is scaled by 0.75 to 480x270 (cover), then 7
    rows are cropped off the top (centre crop), worked out here by hand."""
    scale = 0.75
    return (_LEFT + x * _SIDE / 512) * scale, (y * _SIDE / 512) * scale - (270 - 256) // 2


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One 2 s file cut into a clip of the 16:9 bucket at 256 px, its dataset (unencoded) and its report."""
    root = tmp_path_factory.mktemp("mouth")
    frames = np.stack([np.full((360, 640, 3), 90, np.uint8) if t in _BLANK else _footage_frame(a)
                       for t, a in enumerate(envelope(50))])  # fmt: skip
    noise = 1e-4 * np.random.default_rng(0).standard_normal(2 * OUTPUT_AUDIO_RATE).astype(np.float32)
    write_mp4(frames, noise, root / "footage" / "astronaut.mp4")
    cfg = load_data_config(None, {"buckets": ["16:9"], "base_resolution": 256, "language": "en"})
    out = root / "ds"
    for sub in ("units", "clips"):
        (out / ".work" / sub).mkdir(parents=True)
    unit = prepare_file(root / "footage" / "astronaut.mp4", "astronaut.mp4", {}, cfg, out / ".work")
    assert len(unit.clips) == 1, unit.reason
    write_dataset([unit], out, cfg, None)
    write_report([unit], out)
    return out, unit.clips[0]


def test_the_stored_region_covers_the_mouth_on_the_latent_grid(built):
    out, clip = built
    assert (clip.start_s, clip.width, clip.height, clip.num_frames) == (0.0, 480, 256, 49)
    row = load_dataset_dir(out).dataset[0]
    boxes = row[MOUTH_BOXES]
    assert len(boxes) == 13  # one per latent frame: (49 - 1) / 4 + 1
    (left, y), (right, _) = _in_bucket(_CORNERS[0], _LIPS_Y), _in_bucket(_CORNERS[1], _LIPS_Y)
    cells = {(int(left // 16), int(y // 16)), (int(right // 16), int(y // 16))}  # both mouth corners' cells
    centre = ((left + right) / 32, y / 16)  # in cells
    for t, box in zip(searched_frames(49), boxes):
        if t in _BLANK:
            assert box == list(NO_MOUTH), (t, box)
            continue
        x0, y0, x1, y1 = box
        assert all(x0 <= cx < x1 and y0 <= cy < y1 for cx, cy in cells), (t, box, cells)
        assert x1 - x0 <= 4 and y1 - y0 <= 3, box  # the mouth, not the face (the face is ~5 cells wide)
        assert abs((x0 + x1) / 2 - centre[0]) < 0.75 and abs((y0 + y1) / 2 - centre[1]) < 0.75, (box, centre)


def test_frames_without_a_face_are_counted_in_the_dataset_and_the_report(built):
    out, clip = built
    blank = sum(t in _BLANK for t in searched_frames(49))
    assert blank == 2 and clip.no_face_frames == blank
    summary = json.loads((out / "report.json").read_text())
    assert summary["totals"]["no_face_frames"] == blank and summary["totals"]["mouth_frames"] == 13
    assert summary["files"][0]["no_face_frames"] == {clip.clip_id: blank}
    page = (out / "report.html").read_text()
    assert f"no face in {blank} of 13 latent frames" in page and "Mouth found in 11 of 13 latent frames" in page


def test_a_box_rounds_outward_to_whole_cells_inside_the_grid():
    assert latent_box((17, 33, 31, 47), 480, 256) == (1, 2, 2, 3)  # inside one cell
    assert latent_box((15, 31, 33, 49), 480, 256) == (0, 1, 3, 4)  # touching neighbours
    assert latent_box((470, 250, 480, 256), 480, 256) == (29, 15, 30, 16)  # at the edge: clipped to the grid
    assert latent_box((480, 10, 500, 20), 480, 256) == NO_MOUTH  # lips placed outside the picture: no cell


def test_the_thumbnails_draw_each_latent_frames_box():
    frames = np.full((9, 96, 96, 3), 128, np.uint8)  # latent frames: 0 (frame 0), 1 (frames 1-4), 2 (frames 5-8)
    png, width = thumbnail_strip(frames, columns=3, mouth_boxes=((0, 0, 6, 6), (1, 2, 3, 4), NO_MOUTH))
    strip = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB"))
    magenta = np.all(strip == MOUTH_COLOUR, axis=-1)
    tiles = [magenta[:, k * 96 : (k + 1) * 96] for k in range(3)]  # frames 1, 4 and 7: latent frames 1, 1 and 2
    assert width == 288
    for tile in tiles[:2]:  # cells x 1-2, y 2-3: pixels x 16-47, y 32-63, outlined
        assert tile[32, 16:48].all() and tile[63, 16:48].all() and tile[32:64, 16].all() and tile[32:64, 47].all()
        assert not tile[:32].any() and not tile[64:].any() and not tile[:, :16].any() and not tile[:, 48:].any()
        assert not tile[36:60, 20:44].any()  # an outline: the mouth stays visible
    assert not tiles[2].any()  # no face there: nothing drawn


def test_a_dataset_with_a_wrong_box_is_refused(tmp_path):
    from dataclasses import replace

    from test_dataset_report import _unit

    unit = _unit("m", 1)  # 9 frames of 32x32: 3 latent frames on a 2x2 grid
    good = ((0, 0, 1, 1), NO_MOUTH, (1, 1, 2, 2))
    for boxes, message in ((good[:2], "has 2 boxes for 3 latent frames"), ((*good[:2], (1, 1, 3, 2)), "outside"),
                           ((*good[:2], (1, 1, 1, 2)), "outside")):  # fmt: skip
        unit.clips = [replace(unit.clips[0], mouth_boxes=boxes, no_face_frames=1)]
        write_dataset([unit], tmp_path, load_data_config(None), None)
        with pytest.raises(DatasetError, match=message):
            load_dataset_dir(tmp_path)
    unit.clips = [replace(unit.clips[0], mouth_boxes=good, no_face_frames=1)]
    write_dataset([unit], tmp_path, load_data_config(None), None)
    assert load_dataset_dir(tmp_path).dataset[0][MOUTH_BOXES] == [list(b) for b in good]
