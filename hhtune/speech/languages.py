"""The seven languages hhtune handles and their names (the transcript script check is ``data_prep.checks``)."""

from __future__ import annotations

from ..contract import LANGUAGES

NAMES = {"en": "English", "zh": "Mandarin", "yue": "Cantonese", "ja": "Japanese", "ko": "Korean", "de": "German",
         "fr": "French", "unknown": "unknown language"}  # fmt: skip
_ALIASES = {
    "english": "en", "eng": "en", "mandarin": "zh", "chinese": "zh", "cmn": "zh", "zho": "zh", "cantonese": "yue",
    "zh-hk": "yue", "zh-yue": "yue", "japanese": "ja", "jpn": "ja", "korean": "ko", "kor": "ko", "german": "de",
    "deu": "de", "ger": "de", "french": "fr", "fra": "fr", "fre": "fr", "unknown": "unknown", "": "unknown",
}  # fmt: skip


def normalise_language(code: str | None) -> str:
    """``"en-US"``, ``"English"``, ``"cmn"``, ``"zh-CN"``, ``"Cantonese"`` ... -> one of :data:`LANGUAGES` or
    ``"unknown"``."""
    raw = (code or "").strip().lower().replace("_", "-")
    if raw in _ALIASES:
        return _ALIASES[raw]
    if raw in LANGUAGES:
        return raw
    base = raw.split("-")[0]
    if base in LANGUAGES or base in _ALIASES:
        return _ALIASES.get(base, base)
    raise ValueError(f"unknown language {code!r}; allowed: {', '.join(LANGUAGES)} (or names such as English, Mandarin)")
