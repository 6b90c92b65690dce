"""The shipped neutral prompts drift is measured on: one per language, unrelated to any brand."""

from __future__ import annotations

import json
from pathlib import Path

from ..speech.languages import LANGUAGES

_FILE = Path(__file__).with_name("drift_prompts.json")


def drift_prompts(languages: tuple[str, ...] = LANGUAGES) -> list[str]:
    """The neutral prompt of each language in ``languages`` (all 7 by default), in that order."""
    table = json.loads(_FILE.read_text(encoding="utf-8"))
    missing = [lang for lang in languages if lang not in table]
    if missing:
        raise ValueError(f"no drift prompt for {missing}; shipped: {sorted(k for k in table if not k.startswith('_'))}")
    return [table[lang] for lang in languages]
