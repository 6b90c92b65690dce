"""What the captioner is asked, and the parser of its answer.

The model is asked for three labelled sections (``DESCRIPTION:``, ``SPEAKER:``, ``BACKGROUND SOUND:``). The parser
takes them from anywhere in the answer (chatter before or after, Markdown bold or headings around the labels) and
refuses an answer it cannot trust: a refusal, a missing or empty description, a description too short or not in
English. A refused answer is ``None`` with the reason, and the clip keeps its metadata description.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..captions import NO_BACKGROUND

PROMPT_VERSION = 1  # part of the cache key with the prompt text: a changed prompt captions again

PROMPT = """You write training captions for a video model that generates a person's face, voice and surroundings.
You are given frames sampled in order across one short clip{audio}.

Write three labelled sections and nothing else:

DESCRIPTION: one English paragraph of 150 to 200 words, in plain, literal language with no metaphors. Start with
who is on screen, what they look like and where they are, and their overall mood. Then follow the clip in time
order: expressions and the movements of brows, eyes, lips and jaw; small head and shoulder movements; how the voice
sounds (tone, pace, pitch, loudness) while the person speaks; other sounds at the moment they happen. End with the
shot: camera angle and distance, framing, light quality and direction, depth of field. Do not quote or invent the
spoken words; write "says" where the person speaks.
SPEAKER: at most five words naming the person by look and voice (e.g. "young woman in grey blazer").
BACKGROUND SOUND: the single most prominent background sound in a few words, or "No prominent background sound".
"""

_LABELS = {"description": "DESCRIPTION", "speaker": "SPEAKER", "background": "BACKGROUND SOUND"}
_LABEL_RE = re.compile(r"(?im)^[\s>#*_-]*(DESCRIPTION|SPEAKER|BACKGROUND[ _]SOUND)[*_]*\s*:[*_]*[ \t]*")
_REFUSAL = re.compile(r"(?i)\b(I'?m sorry|I am sorry|I cannot|I can'?t|I'?m unable|I am unable|as an AI)\b")
MIN_WORDS = 40  # a shorter description is not what was asked for: the metadata one is kept instead
MAX_SPEAKER_WORDS = 5


@dataclass(frozen=True)
class Described:
    """A parsed answer: the description, a short speaker description, the most prominent background sound."""

    description: str
    speaker: str
    background: str


def prompt_text(audio: bool) -> str:
    """The instruction sent with every clip (``audio``: the model also hears the clip)."""
    return PROMPT.format(audio=" and its sound track" if audio else "")


def parse_answer(text: str) -> tuple[Described | None, str]:
    """The three sections of an answer, or ``None`` and why it was refused (``""`` when parsed)."""
    if not text or not text.strip():
        return None, "empty answer"
    found = list(_LABEL_RE.finditer(text))
    sections: dict[str, str] = {}
    for k, m in enumerate(found):
        end = found[k + 1].start() if k + 1 < len(found) else len(text)
        label = m.group(1).upper().replace("_", " ")
        sections.setdefault(label, text[m.end() : end].strip())
    description = _clean(sections.get(_LABELS["description"], ""))
    if not description:
        reason = "a refusal" if _REFUSAL.search(text) else "no DESCRIPTION section"
        return None, reason
    if _REFUSAL.search(description[:200]):
        return None, "a refusal"
    n = len(description.split())
    if n < MIN_WORDS:
        return None, f"description of {n} words (fewer than {MIN_WORDS})"
    letters = [ch for ch in description if ch.isalpha()]
    if sum(ch.isascii() for ch in letters) < 0.9 * len(letters):
        return None, "description not in English"
    speaker = " ".join(_clean(sections.get(_LABELS["speaker"], "")).strip(".").split()[:MAX_SPEAKER_WORDS])
    background = _clean(sections.get(_LABELS["background"], "")).rstrip(".").strip("<>").strip() or NO_BACKGROUND
    if re.fullmatch(r"(?i)(none|no|n/a|silence|no background sound)", background):
        background = NO_BACKGROUND
    return Described(description, speaker, background), ""


def _clean(section: str) -> str:
    """A section's text: its first paragraph, one line, without Markdown emphasis or quotes around it."""
    first = re.split(r"\n\s*\n", section.strip())[0]
    first = re.sub(r"[*_`]{1,3}", "", first)
    return " ".join(first.split()).strip().strip('"').strip()


__all__ = ["MAX_SPEAKER_WORDS", "MIN_WORDS", "PROMPT_VERSION", "Described", "parse_answer", "prompt_text"]
