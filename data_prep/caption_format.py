"""Whether a caption follows the official prompt format (shared by the report and ``benchmarks/caption_format.py``).

The format (daVinci-MagiHuman ``prompts/enhanced_prompt_design.md``, as :func:`data_prep.captions.build_caption`
writes it):
an English description of 150-200 words; ``Dialogue:`` with one ``<speaker, Language>: "line"`` per spoken line
(absent when nothing is said); ``Background Sound:`` with one ``<sound>``. CJK characters are separated by spaces.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from .captions import LANGUAGE_NAMES, is_cjk, space_cjk

DESCRIPTION_WORDS = (150, 200)  # the official length of the first paragraph
_DIALOGUE_LINE = re.compile(r'^<(?P<speaker>[^<>]*)>:\s*"(?P<line>.*)"\s*$')


@dataclass(frozen=True)
class CaptionParts:
    """A caption split into its three parts; a missing part is ``None`` (``dialogue`` holds its raw lines)."""

    description: str
    dialogue: list[str] | None
    background: str | None


@dataclass(frozen=True)
class DialogueLine:
    """One ``<speaker, Language>: "line"`` entry; ``language`` is ``""`` when the tag names none."""

    speaker: str
    language: str
    line: str


@dataclass(frozen=True)
class FormatCheck:
    """The result for one caption: ``problems`` break the format, ``warnings`` are worth a look (length)."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    words: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line for a report cell: ``ok``, or the problems then the warnings."""
        return "; ".join(self.problems + self.warnings) or "ok"


def split_caption(caption: str) -> CaptionParts:
    """The description (text before ``Dialogue:``/``Background Sound:``), the Dialogue lines, the background."""
    text = caption.replace("\r\n", "\n").strip()
    bg_at = _heading(text, "Background Sound:")
    dl_at = _heading(text, "Dialogue:")
    ends = [i for i in (bg_at, dl_at) if i is not None]
    description = text[: min(ends)].strip() if ends else text
    dialogue = None
    if dl_at is not None:
        body = text[dl_at + len("Dialogue:") : bg_at if bg_at is not None and bg_at > dl_at else len(text)]
        dialogue = [ln.strip() for ln in body.strip().splitlines() if ln.strip()]
    background = None
    if bg_at is not None:
        body = text[bg_at + len("Background Sound:") :].strip()
        background = body.split("\n\n")[0].strip()
    return CaptionParts(description, dialogue, background)


def _heading(text: str, name: str) -> int | None:
    """Where the paragraph heading ``name`` starts (at a line start), else ``None``."""
    m = re.search(rf"(?m)^{re.escape(name)}[ \t]*$", text)
    return m.start() if m else None


def parse_dialogue_line(raw: str) -> DialogueLine | None:
    """``<Woman in a coat, Korean>: "..."`` as its parts; ``None`` when it does not have that shape."""
    m = _DIALOGUE_LINE.match(raw.strip())
    if not m:
        return None
    speaker, _, language = m["speaker"].rpartition(",")
    return DialogueLine(speaker.strip() if speaker else language.strip(), language.strip() if speaker else "",
                        m["line"])  # fmt: skip


def dialogue_lines(caption: str) -> list[str]:
    """The spoken lines of a caption's Dialogue paragraph (as written there: CJK spaced)."""
    raw = split_caption(caption).dialogue or []
    return [d.line for d in map(parse_dialogue_line, raw) if d is not None]


def check_caption(caption: str, *, transcript: str, trigger: str | None = None,
                  words: tuple[int, int] = DESCRIPTION_WORDS) -> FormatCheck:  # fmt: skip
    """Check one caption against the official format and the clip's ``transcript`` (its lines joined by spaces).

    Problems: a missing part, a Dialogue line without a known language tag, unspaced CJK, Dialogue lines that differ
    from the transcript (or a Dialogue paragraph for a clip where nothing is said), the trigger not exactly once.
    Warnings: a description outside ``words`` (metadata descriptions are often shorter, and still train).
    """
    parts = split_caption(caption)
    problems, warnings = [], []
    n = len(parts.description.split())
    if not parts.description:
        problems.append("no description")
    elif not words[0] <= n <= words[1]:
        warnings.append(f"description has {n} words (official: {words[0]}-{words[1]})")
    if parts.background is None:
        problems.append("no Background Sound paragraph")
    elif not re.fullmatch(r"<[^<>\n]+>", parts.background):
        problems.append("Background Sound is not one <...>")
    said = " ".join(transcript.split())
    if parts.dialogue is None:
        if said:
            problems.append("no Dialogue paragraph, but the clip has a transcript")
    else:
        problems += _dialogue_problems(parts.dialogue, said)
    if _unspaced_cjk(caption):
        problems.append("CJK characters not separated by spaces")
    if trigger:
        count = len(re.findall(rf"(?<!\w){re.escape(trigger)}(?!\w)", caption))
        if count != 1:
            problems.append(f"trigger {trigger!r} appears {count} times (want once)")
    return FormatCheck(problems, warnings, n)


def _dialogue_problems(raw: list[str], said: str) -> list[str]:
    problems = []
    lines = [parse_dialogue_line(r) for r in raw]
    if not raw:
        problems.append("empty Dialogue paragraph")
    if any(d is None for d in lines):
        problems.append('a Dialogue line is not <speaker, Language>: "line"')
    known = set(LANGUAGE_NAMES.values())
    if any(d is not None and d.language not in known for d in lines):
        problems.append(f"a Dialogue line has no language tag ({', '.join(sorted(known))})")
    spoken = " ".join(d.line.strip() for d in lines if d is not None)
    if " ".join(spoken.split()) != " ".join(space_cjk(said).split()):
        problems.append("Dialogue lines differ from the transcript")
    return problems


def _unspaced_cjk(text: str) -> bool:
    """Two CJK letters (not punctuation) side by side with no space between them."""
    return any(is_cjk(a) and is_cjk(b) and a.isalnum() and b.isalnum() for a, b in itertools.pairwise(text))


__all__ = ["DESCRIPTION_WORDS", "CaptionParts", "DialogueLine", "FormatCheck", "check_caption", "dialogue_lines",
           "parse_dialogue_line", "split_caption"]  # fmt: skip
