"""``report.json`` and a self-contained ``report.html``: every second of every file accounted for (used, or dropped
and why), how much of the speech the clips keep, and per clip its frames, waveform, alignment and caption.

The page is rendered from ``templates/report.html.j2`` with Jinja2 (autoescaped). Pictures are inlined as
base64 PNG: thumbnails and waveforms are drawn with Pillow; charts with matplotlib when it is installed
(``matplotlib>=3.8`` in pyproject), else with Pillow.
"""

from __future__ import annotations

import base64
import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from jinja2 import Environment, FileSystemLoader, select_autoescape
from PIL import Image, ImageDraw

from hhtune.io import atomic_write_text

from .accounting import seconds_by_reason
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
        entry = {k: getattr(u, k) for k in ("file", "fate", "reason", "language", "transcript_source",
                                            "alignment_method", "alignment_confidence", "bucket",
                                            "speech_seconds")}  # fmt: skip
        entry["notes"] = [n for n in u.notes if "Traceback" not in n]
        entry["clips"] = len(u.clips)
        entry["clip_ids"] = [c.clip_id for c in u.clips]
        entry["duration_s"] = u.probe.duration if u.probe is not None else None
        entry["timeline"] = u.timeline or []
        entry["seconds"] = seconds_by_reason(entry["timeline"])
        entry["speech_coverage"] = u.speech_coverage or {}
        entry["mask_sources"] = sorted({c.mask_source for c in u.clips} - {""})
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
                   **{k: round(cover.get(k, 0.0), 2) for k in ("transcribed_used_s", "transcribed_s", "detected_used_s",
                                                              "detected_s")}},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "mask_sources": dict(Counter(c.mask_source for c in clips)),
        "skip_reasons": dict(Counter(_reason_kind(u.reason) for u in units if u.fate == "skipped")),
        "by_language": by("language"), "by_bucket": by("bucket"), "by_speaker": by("speaker"),
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


def _group(clips: list[Clip], key: str) -> dict[str, list[Clip]]:
    out: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        out[str(getattr(c, key))].append(c)
    return dict(out)


def _b64png(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def thumbnail_strip(frames: np.ndarray, columns: int = 6) -> str:
    """Base64 PNG: ``columns`` frames evenly across the clip, side by side, 96 px high."""
    pick = frames[np.linspace(0, len(frames) - 1, columns).round().astype(int)]
    strip = Image.fromarray(np.concatenate(list(pick), axis=1))
    strip = strip.resize((max(1, round(strip.width * 96 / strip.height)), 96))
    return _b64png(strip)


def waveform_picture(audio: np.ndarray | None, duration: float, alignment, mask: list[float], width: int = 720) -> str:
    """Base64 PNG: the waveform, under it the aligned words (boxes) and phonemes (ticks), under those the speech
    mask (dark = speech). Labels are in the page's word table (Pillow's default font has no CJK glyphs)."""
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
                        fill=(200, 60, 60))
    return _b64png(img)


def _clip_view(c: Clip, out: Path) -> dict:
    a = alignment_from_json(c.alignment)
    view = {k: getattr(c, k)
            for k in ("clip_id", "start_s", "end_s", "num_frames", "bucket", "width", "height", "caption",
                                  "transcript", "mask_source")}  # fmt: skip
    view.update(method=a.method, words=a.words, confidence=round(a.mean_confidence, 3) if a.words else None,
                strip=None, wave=None)  # fmt: skip
    npz = out / ".work" / "clips" / f"{c.clip_id}.npz"
    if npz.is_file():
        with np.load(npz) as data:
            view["strip"] = thumbnail_strip(data["frames"])
            audio = data["audio"] if "audio" in data else None
        view["wave"] = waveform_picture(audio, c.end_s - c.start_s, a, list(c.speech_mask))
    return view


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


_PALETTE = ["#9e9e9e", "#e0a030", "#d04040", "#8050c0", "#4080c0", "#c06090", "#60a0a0", "#a08050"]


def _fate_text(u: Unit) -> str:
    return f"split into {len(u.clips)} clips" if u.fate == "split" else u.fate


def _html(summary: dict, units: list[Unit], charts: list[tuple[str, str]], out: Path) -> str:
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape())
    reasons = sorted({r["reason"] for f in summary["files"] for r in f["timeline"] if r["status"] != "used"})
    colours = {"used": "#3a9a4a", **{why: _PALETTE[k % len(_PALETTE)] for k, why in enumerate(reasons)}}
    files = []
    for f, u in zip(summary["files"], units):
        cov = f["speech_coverage"]
        files.append({**f, "fate_text": _fate_text(u), "used_s": f["seconds"].get("used", 0.0),
                      "coverage_text": _pct(cov.get("transcribed_used_s", 0), cov.get("transcribed_s", 0)),
                      "clip_views": [_clip_view(c, out) for c in u.clips]})  # fmt: skip
    tables = [(name, summary[key]) for name, key in (("language", "by_language"), ("bucket", "by_bucket"),
                                                     ("speaker", "by_speaker"))]  # fmt: skip
    return env.get_template("report.html.j2").render(
        t=summary["totals"], seconds=summary["seconds"], files=files, tables=tables, alignment=summary["alignment"],
        mask_sources=summary["mask_sources"], charts=charts, charts_drawn_with=summary["charts_drawn_with"],
        colours=colours, pct=_pct, width=lambda r, d: round(100 * (r["end"] - r["start"]) / d, 3) if d else 0)


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"
