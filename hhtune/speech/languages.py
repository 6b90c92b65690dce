"""The seven languages data_prep handles, their names and a script check for transcripts."""

from __future__ import annotations

import unicodedata

LANGUAGES: tuple[str, ...] = ("en", "zh", "yue", "ja", "ko", "de", "fr")
NAMES = {"en": "English", "zh": "Mandarin", "yue": "Cantonese", "ja": "Japanese", "ko": "Korean", "de": "German",
         "fr": "French", "unknown": "unknown language"}  # fmt: skip
_ALIASES = {
    "english": "en", "eng": "en", "mandarin": "zh", "chinese": "zh", "cmn": "zh", "zho": "zh", "cantonese": "yue",
    "zh-hk": "yue", "zh-yue": "yue", "japanese": "ja", "jpn": "ja", "korean": "ko", "kor": "ko", "german": "de",
    "deu": "de", "ger": "de", "french": "fr", "fra": "fr", "fre": "fr", "unknown": "unknown", "": "unknown",
}  # fmt: skip


def normalise_language(code: str | None) -> str:
    """``"en-US"``, ``"English"``, ``"cmn"``, ``"zh-CN"``, ``"Cantonese"`` ... -> one of :data:`LANGUAGES` or ``"unknown"``."""
    raw = (code or "").strip().lower().replace("_", "-")
    if raw in _ALIASES:
        return _ALIASES[raw]
    if raw in LANGUAGES:
        return raw
    base = raw.split("-")[0]
    if base in LANGUAGES or base in _ALIASES:
        return _ALIASES.get(base, base)
    raise ValueError(f"unknown language {code!r}; allowed: {', '.join(LANGUAGES)} (or names such as English, Mandarin)")


def script_language(text: str) -> set[str]:
    """Languages whose script could have written ``text`` (a loose check, for mismatched transcripts)."""
    counts = {"latin": 0, "han": 0, "kana": 0, "hangul": 0}
    for ch in text:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        if name.startswith("CJK"):
            counts["han"] += 1
        elif "HIRAGANA" in name or "KATAKANA" in name:
            counts["kana"] += 1
        elif "HANGUL" in name:
            counts["hangul"] += 1
        elif "LATIN" in name:
            counts["latin"] += 1
    total = sum(counts.values())
    if total == 0:
        return set(LANGUAGES)
    if counts["kana"] / total > 0.1:
        return {"ja"}
    if counts["hangul"] / total > 0.3:
        return {"ko"}
    if counts["han"] / total > 0.3:
        return {"zh", "yue", "ja"}
    if counts["latin"] / total > 0.5:
        return {"en", "de", "fr"}
    return set(LANGUAGES)
