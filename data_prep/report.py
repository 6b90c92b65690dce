"""``report.json`` and a self-contained ``report.html``: the fate of every input file, counts, pictures.

Charts are drawn with matplotlib when it is installed (``matplotlib>=3.8`` in pyproject), else
with Pillow (always installed: it reads reference images); either way they are inlined as base64 PNG.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from hhtune.io import atomic_write_text

from .segment import alignment_from_json


def summarise(units: list[dict]) -> dict:
    """Counts and durations per language, bucket and speaker, alignment methods and quality, every file's fate."""
    clips = [c for u in units for c in u["clips"]]
    dur = lambda cs: round(sum(c["end_s"] - c["start_s"] for c in cs), 2)  # noqa: E731
    by = lambda key: {k: {"clips": len(v), "seconds": dur(v)} for k, v in sorted(_group(clips, key).items())}  # noqa: E731
    phones: dict[str, Counter] = defaultdict(Counter)
    methods: Counter = Counter()
    confidence = []
    for c in clips:
        a = alignment_from_json(c["alignment"])
        methods[a.method] += 1
        phones[c["language"]].update(p.label for p in a.phonemes)
        confidence += [w.confidence for w in a.words]
    fates = Counter(u["fate"] for u in units)
    files = []
    for u in units:
        entry = {k: u.get(k) for k in ("file", "fate", "reason", "language", "transcript_source", "alignment_method",
                                       "alignment_confidence", "bucket", "speech_seconds")}  # fmt: skip
        entry["notes"] = [n for n in u.get("notes", []) if "Traceback" not in n]
        entry["clips"] = len(u["clips"])
        entry["clip_ids"] = [c["clip_id"] for c in u["clips"]]
        entry["duration_s"] = (u.get("probe") or {}).get("duration")
        files.append(entry)
    return {
        "files": files,
        "totals": {"files": len(units), "used": fates["used"] + fates["split"], "used_whole": fates["used"],
                   "split": fates["split"], "skipped": fates["skipped"], "clips": len(clips), "seconds": dur(clips),
                   "source_seconds": round(sum((u.get("probe") or {}).get("duration", 0) for u in units), 2)},  # fmt: skip
        "skip_reasons": dict(Counter(_reason_kind(u["reason"]) for u in units if u["fate"] == "skipped")),
        "by_language": by("language"), "by_bucket": by("bucket"), "by_speaker": by("speaker"),
        "alignment": {
            "methods": dict(methods),
            "mean_word_confidence": round(float(np.mean(confidence)), 3) if confidence else None,
            "note": "rough: no acoustic model, word times estimated from speech activity" if methods["rough"] else "",
        },
        "phonemes": {lang: {"distinct": len(c), "total": sum(c.values()), "counts": dict(c.most_common())}
                     for lang, c in sorted(phones.items())},  # fmt: skip
    }


def _reason_kind(reason: str) -> str:
    """A reason without its specifics (numbers, quoted names), for counting."""
    return reason.split(" (")[0].split(":")[0][:80]


def _group(clips: list[dict], key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for c in clips:
        out[str(c.get(key, ""))].append(c)
    return dict(out)


def _b64png(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def contact_sheet(npz: Path, speech_mask: list[float] | None = None, columns: int = 4) -> str | None:
    """Base64 PNG: ``columns`` frames across the clip, with its speech mask as a strip underneath (dark = speech)."""
    from PIL import Image, ImageDraw

    if not npz.is_file():
        return None
    with np.load(npz) as data:
        frames = data["frames"]
    pick = frames[np.linspace(0, len(frames) - 1, columns).round().astype(int)]
    sheet = Image.fromarray(np.concatenate(list(pick), axis=1))
    sheet.thumbnail((640, 160))
    out = Image.new("RGB", (sheet.width, sheet.height + 6), "white")
    out.paste(sheet, (0, 0))
    draw = ImageDraw.Draw(out)
    draw.rectangle([0, sheet.height + 1, sheet.width, sheet.height + 5], fill=(220, 220, 220))
    for i, v in enumerate(speech_mask or []):
        if v > 0.5:
            x0, x1 = i * sheet.width / len(speech_mask), (i + 1) * sheet.width / len(speech_mask)
            draw.rectangle([x0, sheet.height + 1, x1, sheet.height + 5], fill=(200, 60, 60))
    return _b64png(out)


def _charts(summary: dict, clips: list[dict]) -> tuple[list[tuple[str, str]], str]:
    durations = [c["end_s"] - c["start_s"] for c in clips]
    coverage = {k: v["counts"] for k, v in summary["phonemes"].items()}
    try:
        return _charts_matplotlib(durations, coverage), "matplotlib"
    except ImportError:
        return _charts_pil(durations, coverage), "pillow"


def _charts_matplotlib(durations: list[float], coverage: dict[str, dict[str, int]]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    from PIL import Image, ImageDraw

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
    out = [("Clip durations", bars(hist.tolist(), [f"{edges[0]:.1f}s", "...", f"{edges[-1]:.1f}s"], "clips per duration"))]
    for lang, counts in coverage.items():
        out.append((f"Phoneme coverage: {lang} ({len(counts)} distinct)",
                    bars(list(counts.values())[:60], list(counts)[:60], lang)))  # fmt: skip
    return out


def write_report(units: list[dict], out: Path) -> dict:
    """Write ``report.json`` and ``report.html`` atomically; return the summary."""
    out = Path(out)
    summary = summarise(units)
    clips = [c for u in units for c in u["clips"]]
    charts, summary["charts_drawn_with"] = _charts(summary, clips)
    atomic_write_text(out / "report.json", json.dumps(summary, indent=2, ensure_ascii=False))
    atomic_write_text(out / "report.html", _html(summary, units, charts, out))
    return summary


def _fate_text(u: dict) -> str:
    return f"split into {len(u['clips'])} clips" if u["fate"] == "split" else u["fate"]


def _html(summary: dict, units: list[dict], charts: list[tuple[str, str]], out: Path) -> str:
    e = html.escape
    rows = "".join(
        f"<tr class='{e(u['fate'])}'><td>{e(u['file'])}</td><td>{e(_fate_text(u))}</td><td>{len(u['clips'])}</td>"
        f"<td>{e(u.get('language') or '')}</td><td>{e(u.get('alignment_method') or '')}"
        f"{' (%.2f)' % u['alignment_confidence'] if u.get('alignment_confidence') is not None else ''}</td>"
        f"<td>{e(u.get('reason') or '') if u['fate'] == 'skipped' else ''}</td>"
        f"<td>{'<br>'.join(e(n) for n in u.get('notes', []) if 'Traceback' not in n)}</td></tr>"
        for u in units
    )
    sheets = []
    for u in units:
        for c in u["clips"]:
            img = contact_sheet(out / ".work" / "clips" / f"{c['clip_id']}.npz", c.get("speech_mask"))
            if img:
                sheets.append(
                    f"<figure><img src='data:image/png;base64,{img}'><figcaption><b>{e(c['clip_id'])}</b> · "
                    f"{e(c['bucket'])} {c['width']}x{c['height']} · {c['num_frames']} frames · {c['start_s']:.2f}-"
                    f"{c['end_s']:.2f} s · {e(c['language'])}<pre>{e(c['caption'])}</pre></figcaption></figure>"
                )  # fmt: skip
    t = summary["totals"]
    tables = "".join(
        f"<h3>per {name}</h3><table><tr><th>{name}</th><th>clips</th><th>seconds</th></tr>"
        + "".join(f"<tr><td>{e(k)}</td><td>{v['clips']}</td><td>{v['seconds']}</td></tr>" for k, v in summary[key].items())
        + "</table>"
        for name, key in (("language", "by_language"), ("bucket", "by_bucket"), ("speaker", "by_speaker"))
    )
    al = summary["alignment"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>data_prep report</title><style>
body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}} tr.skipped{{background:#fff1f0}}
tr.split{{background:#f0f7ff}} figure{{display:inline-block;margin:8px;max-width:660px;vertical-align:top}}
img{{max-width:640px}} pre{{white-space:pre-wrap;font-size:11px}}</style></head><body>
<h1>Dataset report</h1>
<p>{t['files']} input files ({t['source_seconds']} s): {t['used_whole']} used whole, {t['split']} split, {t['skipped']} skipped;
{t['clips']} training clips, {t['seconds']} s.</p>
<p>Alignment: {e(json.dumps(al['methods']))}; mean word confidence {al['mean_word_confidence']}. {e(al['note'])}</p>
<h2>Every input file</h2><table><tr><th>file</th><th>fate</th><th>clips</th><th>language</th><th>alignment</th>
<th>why skipped</th><th>notes</th></tr>{rows}</table>
<h2>Counts and durations</h2>{tables}
{''.join(f"<h2>{e(title)}</h2><img src='data:image/png;base64,{img}'>" for title, img in charts)}
<p><small>charts drawn with {e(summary['charts_drawn_with'])}</small></p>
<h2>Clips</h2>{''.join(sheets)}</body></html>"""
