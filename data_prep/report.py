"""``report.json`` and a self-contained ``report.html``: the fate of every input file, counts, pictures."""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from hhtune.io import atomic_write_text

from .align import Alignment


def summarise(units: list[dict]) -> dict:
    """Counts and durations per language, bucket, speaker and alignment method, and every file's fate."""
    clips = [c for u in units for c in u["clips"]]
    dur = lambda cs: round(sum(c["end_s"] - c["start_s"] for c in cs), 2)  # noqa: E731
    by = lambda key: {k: {"clips": len(v), "seconds": dur(v)} for k, v in _group(clips, key).items()}  # noqa: E731
    phones: dict[str, Counter] = defaultdict(Counter)
    methods: Counter = Counter()
    confidence = []
    for c in clips:
        a = Alignment.from_json(c["alignment"])
        methods[a.method] += 1
        phones[c["language"]].update(p.label for p in a.phonemes)
        if a.words:
            confidence.append(a.mean_confidence)
    return {
        "files": [{k: u.get(k) for k in ("file", "fate", "reason", "notes", "language", "alignment_method",
                                           "transcript_source")} | {"clips": len(u["clips"])} for u in units],  # fmt: skip
        "totals": {"files": len(units), "used": sum(u["fate"] == "used" for u in units),
                   "skipped": sum(u["fate"] != "used" for u in units), "clips": len(clips), "seconds": dur(clips)},  # fmt: skip
        "by_language": by("language"), "by_bucket": by("bucket"), "by_speaker": by("speaker"),
        "alignment": {"methods": dict(methods), "mean_word_confidence": float(np.mean(confidence)) if confidence else None},
        "phoneme_inventory": {k: len(v) for k, v in phones.items()},
    }  # fmt: skip


def _group(clips: list[dict], key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for c in clips:
        out[str(c.get(key, ""))].append(c)
    return dict(out)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return base64.b64encode(buf.getvalue()).decode()


def _contact_sheet(npz: Path) -> str | None:
    from PIL import Image

    if not npz.is_file():
        return None
    frames = np.load(npz)["frames"]
    pick = frames[np.linspace(0, len(frames) - 1, 4).round().astype(int)]
    sheet = Image.fromarray(np.concatenate(list(pick), axis=1))
    sheet.thumbnail((512, 128))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_report(units: list[dict], out: Path) -> dict:
    """Write ``report.json`` and ``report.html`` atomically; return the summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(units)
    atomic_write_text(out / "report.json", json.dumps(summary, indent=2, ensure_ascii=False))
    clips = [c for u in units for c in u["clips"]]
    figs = []
    fig, ax = plt.subplots(figsize=(5, 2.5))
    ax.hist([c["end_s"] - c["start_s"] for c in clips] or [0], bins=20)
    ax.set_xlabel("clip seconds")
    ax.set_ylabel("clips")
    fig.tight_layout()
    figs.append(("Clip durations", _png(fig)))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 2.5))
    inv = summary["phoneme_inventory"]
    ax.bar(list(inv) or ["-"], list(inv.values()) or [0])
    ax.set_ylabel("distinct phonemes")
    fig.tight_layout()
    figs.append(("Phoneme coverage per language", _png(fig)))
    plt.close(fig)
    e = html.escape
    rows = "".join(
        f"<tr class='{e(u['fate'])}'><td>{e(u['file'])}</td><td>{e(u['fate'])}</td><td>{len(u['clips'])}</td>"
        f"<td>{e(u.get('language') or '')}</td><td>{e(u.get('reason') or '')}</td><td>{e('; '.join(n for n in u.get('notes', []) if len(n) < 300))}</td></tr>"
        for u in units
    )
    sheets = "".join(
        f"<figure><img src='data:image/png;base64,{img}'><figcaption>{e(c['clip_id'])} · {e(c['bucket'])} · "
        f"{c['num_frames']} frames · {e(c['language'])}<br><small>{e(c['caption'][:300])}</small></figcaption></figure>"
        for c in clips if (img := _contact_sheet(out / ".work" / "clips" / f"{c['clip_id']}.npz"))
    )
    t = summary["totals"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>data_prep report</title><style>
body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}
tr.skipped{{background:#fff1f0}} figure{{display:inline-block;margin:8px;max-width:520px}} img{{max-width:512px}}</style></head><body>
<h1>Dataset report</h1><p>{t['files']} files: {t['used']} used, {t['skipped']} skipped; {t['clips']} clips, {t['seconds']} s.
Alignment: {e(json.dumps(summary['alignment']))}</p>
<h2>Files</h2><table><tr><th>file</th><th>fate</th><th>clips</th><th>language</th><th>reason</th><th>notes</th></tr>{rows}</table>
<h2>Per language / bucket / speaker</h2><pre>{e(json.dumps({k: summary[k] for k in ('by_language', 'by_bucket', 'by_speaker')}, indent=1, ensure_ascii=False))}</pre>
{''.join(f"<h2>{e(title)}</h2><img src='data:image/png;base64,{img}'>" for title, img in figs)}
<h2>Clips</h2>{sheets}</body></html>"""
    atomic_write_text(out / "report.html", page)
    return summary
