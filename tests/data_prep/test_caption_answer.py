"""The captioner's answer parser on real-looking answers: well-formed, chatty, partial, refused, off-format."""

from __future__ import annotations

import pytest

from data_prep.captioner.answer import MIN_WORDS, parse_answer, prompt_text
from data_prep.captions import NO_BACKGROUND

DESCRIPTION = ("A woman in her thirties with shoulder-length brown hair and a grey blazer sits at a desk in a bright "
               "office. Her mood is calm and confident. She looks into the lens, lifts her outer brows slightly and "
               "parts her lips as she says her first words in a warm, even, mid-pitched voice at a steady pace. The "
               "corners of her mouth rise into a small smile between phrases, and her jaw moves in short, regular "
               "strokes. She tilts her head a few degrees to the left and relaxes her shoulders. A soft hum of an "
               "air conditioner sits under her voice. The static medium close-up is taken at eye level, with her "
               "face centred; soft daylight falls from a window on the left, and the shallow depth of field keeps "
               "her face sharp against a blurred shelf.")


def test_well_formed_answer_gives_all_three_parts():
    d, why = parse_answer(f"DESCRIPTION: {DESCRIPTION}\nSPEAKER: woman in grey blazer\n"
                          "BACKGROUND SOUND: air conditioner hum")
    assert why == "" and d is not None
    assert d.description == DESCRIPTION
    assert d.speaker == "woman in grey blazer"
    assert d.background == "air conditioner hum"


def test_chatter_markdown_and_brackets_around_the_sections_are_dropped():
    text = (f"Sure! Here is the caption for the clip.\n\n**Description:** {DESCRIPTION}\n\n"
            "**Speaker:** \"Woman in a grey blazer with brown hair and a warm voice\"\n"
            "**Background sound:** <Soft air conditioner hum>.\n\nLet me know if you need anything else!")
    d, why = parse_answer(text)
    assert why == "" and d is not None
    assert d.description == DESCRIPTION
    assert d.speaker == "Woman in a grey blazer"  # cut to five words
    assert d.background == "Soft air conditioner hum"


def test_missing_speaker_and_background_fall_back():
    d, _ = parse_answer(f"DESCRIPTION: {DESCRIPTION}")
    assert d is not None and d.speaker == "" and d.background == NO_BACKGROUND
    d, _ = parse_answer(f"DESCRIPTION: {DESCRIPTION}\nBACKGROUND SOUND: none")
    assert d.background == NO_BACKGROUND


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty answer"),
    ("I'm sorry, but I can't help with describing people in this video.", "a refusal"),
    (f"DESCRIPTION: I cannot describe this person. {DESCRIPTION}", "a refusal"),
    (f"The clip shows: {DESCRIPTION}", "no DESCRIPTION section"),
    ("DESCRIPTION: A woman talks.\nSPEAKER: woman", f"description of 3 words (fewer than {MIN_WORDS})"),
    ("DESCRIPTION: " + "一 个 女 人 在 办 公 室 里 说 话 。" * 8, "description not in English"),
    ('\x05��"��"��"��"��"', "no DESCRIPTION section"),  # what a tiny random model says
])  # fmt: skip
def test_unusable_answers_are_refused_with_the_reason(text, reason):
    d, why = parse_answer(text)
    assert d is None
    assert why == reason


def test_prompt_asks_for_the_sections_the_parser_reads_and_mentions_sound_only_when_heard():
    for hears in (True, False):
        p = prompt_text(hears)
        assert all(label in p for label in ("DESCRIPTION:", "SPEAKER:", "BACKGROUND SOUND:"))
        assert "150 to 200 words" in p
        assert ("sound track" in p) == hears
