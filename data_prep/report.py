"""``report.json`` and a self-contained ``report.html``: every second of every file accounted for (used, or dropped
and why), how much of the speech the clips keep, and per clip its frames, waveform, alignment and caption.

The page is rendered from ``templates/report.html.j2`` with Jinja2, autoescaped: captions, transcripts and file
names are text, never markup. Pictures are inlined as base64 PNG: thumbnails and waveforms are drawn with Pillow
(the waveform on the filmstrip's time axis: same width, same start and end); charts with matplotlib when it is
installed (``matplotlib>=3.8`` in pyproject), else with Pillow. Each clip's sound is inlined as a small mono MP3.
Colours are fixed per category (:data:`CATEGORY_COLOURS`), the same in every report.
"""

from __future__ import annotations

import base64
import io
import json
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import librosa
import numpy as np
import soundfile
from jinja2 import Environment, FileSystemLoader
from PIL import Image, ImageDraw

from hhtune.contract import AUDIO_SAMPLE_RATE, MANIFEST, NO_MOUTH, VIDEO_STRIDE, latent_frame_of
from hhtune.io import atomic_write_text

from .accounting import NOT_IN_CLIP, SILENCE, UNTRANSCRIBED, USED, seconds_by_reason
from .caption_format import check_caption
from .segment import alignment_from_json
from .units import Clip, Unit


def summarise(units: list[Unit]) -> dict:
    """Counts and durations per language, bucket and speaker, alignment methods and quality, every file's fate."""
    clips = [c for u in units for c in u.clips]
    dur = lambda cs: round(sum(c.end_s - c.start_s for c in cs), 2)
    by = lambda key: {k: {"clips": len(v), "seconds": dur(v)} for k, v in sorted(_group(clips, key).items())}
    phones: dict[str, Counter] = defaultdict(Counter)
    methods: Counter = Counter()
    confidence = []
    for c in clips:
        a = alignment_from_json(c.alignment)
        methods[a.method] += 1
        phones[c.language].update(p.label for p in a.phonemes)
        confidence += [w.confidence for w in a.words]
    fates = Counter(u.fate for u in units)
    files = []
    for u in units:
        entry = {k: getattr(u, k) for k in ("file", "fate", "reason", "kind", "language", "language_source",
                                            "language_confidence", "transcript_source", "alignment_method",
                                            "alignment_confidence", "bucket", "speech_seconds")}  # fmt: skip
        entry["notes"] = [n for n in u.notes if "Traceback" not in n]
        entry["clips"] = len(u.clips)
        entry["clip_ids"] = [c.clip_id for c in u.clips]
        entry["caption_format"] = {c.clip_id: check_caption(c.caption, transcript=c.transcript).summary()
                                   for c in u.clips}  # fmt: skip
        entry["duration_s"] = u.probe.duration if u.probe is not None else None
        entry["timeline"] = u.timeline or []
        entry["seconds"] = seconds_by_reason(entry["timeline"])
        entry["speech_coverage"] = u.speech_coverage or {}
        entry["mask_sources"] = sorted({c.mask_source for c in u.clips} - {""})
        # per clip: latent frames without a face (data config mouth_regions; no mouth weight there)
        entry["no_face_frames"] = {c.clip_id: c.no_face_frames for c in u.clips if c.no_face_frames is not None}
        files.append(entry)
    seconds: Counter = Counter()
    cover: Counter = Counter()
    for f in files:
        seconds.update(f["seconds"])
        cover.update(f["speech_coverage"])
    return {
        "files": files,
        "totals": {"files": len(units), "used": fates["used"] + fates["split"], "used_whole": fates["used"],
                   "split": fates["split"], "skipped": fates["skipped"], "clips": len(clips), "seconds": dur(clips),
                   "source_seconds": round(sum(u.probe.duration for u in units if u.probe is not None), 2),
                   "dropped_seconds": round(sum(v for k, v in seconds.items() if k != "used"), 2),
                   # data config mouth_regions: latent frames searched for a face, and those where none was found
                   "mouth_frames": sum(len(c.mouth_boxes) for c in clips if c.mouth_boxes is not None),
                   "no_face_frames": sum(c.no_face_frames or 0 for c in clips),
                   **{k: round(cover.get(k, 0.0), 2) for k in ("transcribed_used_s", "transcribed_s", "detected_used_s",
                                                              "detected_s")}},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "mask_sources": dict(Counter(c.mask_source for c in clips)),
        "skip_reasons": dict(Counter(_reason_kind(u.reason) for u in units if u.fate == "skipped")),
        "by_language": by("language"), "by_bucket": by("bucket"), "by_speaker": by("speaker"),
        # speech, ambient (music, sound), silent video ...; and where the Dialogue lines came from
        "by_kind": {k: {"clips": len(v), "seconds": dur(v)}
                    for k, v in sorted(_group_units(units).items())},
        "by_transcript_source": by("transcript_source"),
        "alignment": {
            "methods": dict(methods),
            "mean_word_confidence": round(float(np.mean(confidence)), 3) if confidence else None,
        },
        "phonemes": {lang: {"distinct": len(c), "total": sum(c.values()), "counts": dict(c.most_common())}
                     for lang, c in sorted(phones.items())},
    }


def _reason_kind(reason: str) -> str:
    """A reason without its specifics (numbers, quoted names), for counting."""
    return reason.split(" (")[0].split(":")[0][:80]


def _group_units(units: list[Unit]) -> dict[str, list[Clip]]:
    """Clips by the kind of footage they were cut from."""
    out: dict[str, list[Clip]] = defaultdict(list)
    for u in units:
        if u.clips:
            out[u.kind or "speech"] += u.clips
    return out


def _group(clips: list[Clip], key: str) -> dict[str, list[Clip]]:
    out: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        out[str(getattr(c, key))].append(c)
    return dict(out)


def _b64png(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def thumbnail_strip(frames: np.ndarray, columns: int = 6,
                    mouth_boxes: tuple[tuple[int, int, int, int], ...] | None = None) -> tuple[str, int]:
    """Base64 PNG of ``columns`` frames side by side, 96 px high, and its width. Tile ``i`` stands for the ``i``-th
    ``columns``-th of the clip and shows the frame at its middle, so x is time as on :func:`waveform_picture`.
    With ``mouth_boxes`` (per latent frame, in latent cells) each tile has its latent frame's box drawn in
    :data:`MOUTH_COLOUR`, as the loss sees it: whole 16 px cells."""
    index = np.minimum(len(frames) - 1, ((np.arange(columns) + 0.5) * len(frames) / columns).astype(int))
    tiles = [Image.fromarray(frames[i]) for i in index]
    if mouth_boxes is not None:
        _, sy, sx = VIDEO_STRIDE
        line = max(2, round(2 * frames.shape[1] / 96))  # still 2 px once the strip is scaled to 96 px high
        for tile, i in zip(tiles, index):
            box = mouth_boxes[min(latent_frame_of(int(i)), len(mouth_boxes) - 1)]
            if tuple(box) != NO_MOUTH:
                x0, y0, x1, y1 = box
                ImageDraw.Draw(tile).rectangle([x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1], outline=MOUTH_COLOUR,
                                               width=line)  # fmt: skip
    strip = Image.fromarray(np.concatenate([np.asarray(t) for t in tiles], axis=1))
    strip = strip.resize((max(1, round(strip.width * 96 / strip.height)), 96))
    return _b64png(strip), strip.width


def audio_mp3(audio: np.ndarray, rate: int, out_rate: int = 16000) -> str:
    """Base64 MP3 of ``audio`` (``[channels, samples]`` or ``[samples]``) as mono at ``out_rate`` Hz: a few KB per
    second, small enough to inline one per clip."""
    mono = audio.mean(axis=0) if audio.ndim == 2 else audio
    mono = librosa.resample(np.asarray(mono, np.float32), orig_sr=rate, target_sr=out_rate)
    buf = io.BytesIO()
    soundfile.write(buf, np.clip(mono, -1.0, 1.0), out_rate, format="MP3", subtype="MPEG_LAYER_III")
    return base64.b64encode(buf.getvalue()).decode()


def waveform_picture(audio: np.ndarray | None, duration: float, alignment, mask: list[float], width: int = 720) -> str:
    """Base64 PNG: the waveform, under it the aligned words (boxes) and phonemes (ticks), under those the speech
    mask (speech in :data:`MASK_COLOUR`). Labels are in the page's word table (Pillow's default font has no CJK
    glyphs). Pass the filmstrip's width so that both share one time axis."""
    h_wave, h_words, h_mask = 60, 22, 8
    img = Image.new("RGB", (width, h_wave + h_words + h_mask + 4), "white")
    d = ImageDraw.Draw(img)
    x = lambda t: round(t / max(duration, 1e-6) * (width - 1))
    if audio is not None and audio.size:
        mono = audio.mean(axis=0) if audio.ndim == 2 else audio
        cols = np.array_split(mono, width)
        peak = max(1e-6, float(np.abs(mono).max()))
        for i, col in enumerate(cols):
            v = float(np.abs(col).max()) / peak if col.size else 0.0
            d.line([(i, h_wave / 2 - v * h_wave / 2), (i, h_wave / 2 + v * h_wave / 2)], fill=(70, 110, 180))
    top = h_wave + 2
    for k, w in enumerate(alignment.words):
        shade = int(120 + 100 * (1 - min(1.0, max(0.0, w.confidence))))  # darker = more confident
        d.rectangle([x(w.start), top, max(x(w.start) + 1, x(w.end)), top + h_words - 4],
                    fill=(shade, 160 + 40 * (k % 2), shade), outline=(40, 90, 40))  # fmt: skip
    for p in alignment.phonemes:
        d.line([(x(p.start), top + h_words - 4), (x(p.start), top + h_words)], fill=(0, 0, 0))
    mt = top + h_words + 2
    d.rectangle([0, mt, width, mt + h_mask], fill=(225, 225, 225))
    for i, v in enumerate(mask or []):
        if v > 0.5:
            d.rectangle([x(i * duration / len(mask)), mt, x((i + 1) * duration / len(mask)), mt + h_mask],
                        fill=MASK_COLOUR)
    return _b64png(img)


def _clip_view(c: Clip, out: Path) -> dict:
    a = alignment_from_json(c.alignment)
    view = {k: getattr(c, k)
            for k in ("clip_id", "start_s", "end_s", "num_frames", "bucket", "width", "height", "caption",
                                  "transcript", "mask_source")}  # fmt: skip
    view.update(method=a.method, words=a.words, confidence=round(a.mean_confidence, 3) if a.words else None,
                strip=None, wave=None, sound=None, picture_width=None,
                timing_text=plain_timing(a.method, a.mean_confidence if a.words else None),
                timing_detail=_timing_detail(a.method, a.mean_confidence if a.words else None),
                mask_text=plain_mask_source(c.mask_source), mouth_text=mouth_text(c),
                caption_format=check_caption(c.caption, transcript=c.transcript))  # fmt: skip
    npz = out / ".work" / "clips" / f"{c.clip_id}.npz"
    if npz.is_file():
        with np.load(npz) as data:
            view["strip"], view["picture_width"] = thumbnail_strip(data["frames"], mouth_boxes=c.mouth_boxes)
            audio = data["audio"] if "audio" in data else None
        view["wave"] = waveform_picture(audio, c.end_s - c.start_s, a, list(c.speech_mask), view["picture_width"])
        if audio is not None and audio.size:
            view["sound"] = audio_mp3(audio, AUDIO_SAMPLE_RATE)
    return view


# One colour per category, the same in every report whatever categories it has. Red means nothing here: the speech
# mask has its own colour (MASK_COLOUR), used nowhere in the legend.
CATEGORY_COLOURS = {USED: "#2e8b3e", SILENCE: "#b4b4b4", UNTRANSCRIBED: "#e0a030", NOT_IN_CLIP: "#b8682c"}
# Any other reason a stretch was dropped: a colour picked from its wording, so the same reason looks the same
# everywhere.
OTHER_COLOURS = ("#7a5ca8", "#4a7ab0", "#a0607a", "#5f8f8f", "#8a7050", "#6b6bb5")
MASK_COLOUR = (40, 50, 110)  # dark navy: speech in the clip's speech mask
MOUTH_COLOUR = (230, 30, 200)  # magenta: the mouth box on the thumbnails (data config mouth_regions)


def category_colour(category: str) -> str:
    """The colour of a timeline category (``used`` or the reason a stretch was dropped)."""
    if category in CATEGORY_COLOURS:
        return CATEGORY_COLOURS[category]
    return OTHER_COLOURS[zlib.crc32(_reason_kind(category).encode()) % len(OTHER_COLOURS)]


_TIMING = {"ctc": "words timed by a speech recogniser", "dtw": "words timed by matching the transcript to the sound",
           "none": "no word timing"}  # fmt: skip


def plain_timing(method: str | None, confidence: float | None) -> str:
    """How a clip's words were timed, in plain words (the method and score go in :func:`_timing_detail`)."""
    text = _TIMING.get(method or "none", f"words timed ({method})")
    if confidence is None or method in (None, "none"):
        return text
    return f"{text}, {'good' if confidence >= 0.6 else 'fair' if confidence >= 0.3 else 'poor'} match"


def _timing_detail(method: str | None, confidence: float | None) -> str:
    score = "" if confidence is None else f", mean word confidence {confidence:.2f} (DTW path cost or CTC posterior)"
    return f"alignment method: {method or 'none'}{score}"


def plain_mask_source(source: str) -> str:
    """Where a clip's speech mask (which audio frames are speech) came from, in plain words."""
    if source.startswith("phonemes"):
        text = "from the timed speech sounds"
        return text + (", checked by a voice detector" if "silero" in source else "")
    return {"silero": "from a voice detector", "energy": "from loudness"}.get(source, source)


def mouth_text(c: Clip) -> str:
    """Whether a clip's mouth was found, in plain words ("" when the data config's mouth_regions was off)."""
    if c.mouth_boxes is None:
        return ""
    n = len(c.mouth_boxes)
    if not c.no_face_frames:
        return f"mouth found in all {n} latent frames"
    return f"no face in {c.no_face_frames} of {n} latent frames (no mouth weight there)"


def plural(n: int, word: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _charts(summary: dict, clips: list[Clip]) -> tuple[list[tuple[str, str]], str]:
    durations = [c.end_s - c.start_s for c in clips]
    coverage = {k: v["counts"] for k, v in summary["phonemes"].items()}
    try:
        return _charts_matplotlib(durations, coverage), "matplotlib"
    except ImportError:
        return _charts_pil(durations, coverage), "pillow"


def _charts_matplotlib(durations: list[float], coverage: dict[str, dict[str, int]]) -> list[tuple[str, str]]:
    import matplotlib  # noqa: PLC0415 -- optional: _charts_pil draws the charts without matplotlib; Agg is set before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- optional: _charts_pil draws the charts without matplotlib; Agg is set before pyplot loads

    def png(fig) -> str:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        return base64.b64encode(buf.getvalue()).decode()

    out = []
    fig, ax = plt.subplots(figsize=(5, 2.5))
    spread = max(durations) - min(durations) if durations else 0.0
    ax.hist(durations or [0], bins=20 if spread > 1e-3 else 1)  # identical durations: one bin (20 would fail)
    ax.set_xlabel("clip seconds")
    ax.set_ylabel("clips")
    out.append(("Clip durations", png(fig)))
    if coverage:
        fig, axes = plt.subplots(len(coverage), 1, figsize=(9, 1.6 * len(coverage)), squeeze=False)
        for ax, (lang, counts) in zip(axes[:, 0], coverage.items()):
            labels = list(counts)[:60]
            ax.bar(range(len(labels)), [counts[k] for k in labels])
            ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=90)
            ax.set_ylabel(lang)
            ax.set_title(f"{lang}: {len(counts)} distinct phonemes", fontsize=8)
        out.append(("Phoneme coverage per language (counts of each phoneme)", png(fig)))
    return out


def _charts_pil(durations: list[float], coverage: dict[str, dict[str, int]]) -> list[tuple[str, str]]:
    """The same charts, plainer, when matplotlib is not installed."""
    def bars(values: list[float], labels: list[str], title: str) -> str:
        w, h = max(320, 12 * len(values) + 40), 160
        img = Image.new("RGB", (w, h), "white")
        d = ImageDraw.Draw(img)
        d.text((5, 2), title, fill="black")
        top = max(values) if values and max(values) > 0 else 1
        bw = (w - 40) / max(1, len(values))
        for i, v in enumerate(values):
            x = 30 + i * bw
            d.rectangle([x, h - 20 - (h - 40) * v / top, x + bw * 0.8, h - 20], fill=(70, 110, 180))
        d.text((5, h - 15), " ".join(labels)[: w // 6], fill="black")
        return _b64png(img)

    spread = max(durations) - min(durations) if durations else 0.0
    hist, edges = np.histogram(durations or [0], bins=20 if spread > 1e-3 else 1)
    out = [("Clip durations",
            bars(hist.tolist(), [f"{edges[0]:.1f}s", "...", f"{edges[-1]:.1f}s"], "clips per duration"))]
    for lang, counts in coverage.items():
        out.append((f"Phoneme coverage: {lang} ({len(counts)} distinct)",
                    bars(list(counts.values())[:60], list(counts)[:60], lang)))  # fmt: skip
    return out


def write_report(units: list[Unit], out: Path) -> dict:
    """Write ``report.json`` and ``report.html`` atomically; return the summary."""
    out = Path(out)
    summary = summarise(units)
    clips = [c for u in units for c in u.clips]
    charts, summary["charts_drawn_with"] = _charts(summary, clips)
    atomic_write_text(out / "report.json", json.dumps(summary, indent=2, ensure_ascii=False))
    atomic_write_text(out / "report.html", _html(summary, units, charts, out))
    return summary


def _fate_text(u: Unit) -> str:
    if u.fate == "split":
        return f"split into {plural(len(u.clips), 'clip')}"
    return {"used": "used whole", "skipped": "skipped"}[u.fate]


def _html(summary: dict, units: list[Unit], charts: list[tuple[str, str]], out: Path) -> str:
    # The template is .html.j2, which select_autoescape() would not escape: autoescaping is switched on by name.
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True)
    categories = [USED, *sorted({r["reason"] for f in summary["files"] for r in f["timeline"]
                                 if r["status"] != "used"})]
    files, edited = [], edited_captions(out)
    for f, u in zip(summary["files"], units):
        cov = f["speech_coverage"]
        confidence = f["alignment_confidence"]
        files.append({**f, "fate_text": _fate_text(u), "used_s": f["seconds"].get("used", 0.0),
                      "coverage_text": _pct(cov.get("transcribed_used_s", 0), cov.get("transcribed_s", 0)),
                      "timing_text": plain_timing(f["alignment_method"], confidence) if f["alignment_method"] else "",
                      "timing_detail": _timing_detail(f["alignment_method"], confidence),
                      "mask_text": "; ".join(plain_mask_source(m) for m in f["mask_sources"]),
                      "clip_views": [{**_clip_view(c, out), "edited": edited.get(c.clip_id)}
                                     for c in u.clips]})  # fmt: skip
    tables = [(name, summary[key]) for name, key in (("language", "by_language"), ("bucket", "by_bucket"),
                                                     ("speaker", "by_speaker"), ("kind of footage", "by_kind"),
                                                     ("transcript", "by_transcript_source"))]  # fmt: skip
    return env.get_template("report.html.j2").render(
        t=summary["totals"], seconds=summary["seconds"], files=files, tables=tables, alignment=summary["alignment"],
        mask_sources=summary["mask_sources"], charts=charts, charts_drawn_with=summary["charts_drawn_with"],
        legend=[(c, category_colour(c)) for c in categories], colour=category_colour, plural=plural,
        mask_colour="#{:02x}{:02x}{:02x}".format(*MASK_COLOUR), pct=_pct,
        mouth_colour="#{:02x}{:02x}{:02x}".format(*MOUTH_COLOUR),
        width=lambda r, d: round(100 * (r["end"] - r["start"]) / d, 3) if d else 0)  # fmt: skip


def edited_captions(out: Path) -> dict[str, str]:
    """Clip id -> when its caption was last edited in review (``python -m data_prep captions --import``), from the
    manifest's ``edits``."""
    manifest = Path(out) / MANIFEST
    edits = json.loads(manifest.read_text()).get("edits", []) if manifest.is_file() else []
    return {e["clip_id"]: e["at"] for e in edits}


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"
