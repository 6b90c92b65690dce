"""Whisper through transformers, on a tiny random model built offline: restricted language ID, cues timed from the
word timestamps (in file time), low-confidence cues flagged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_whisper import NEW_TOKENS, build_tiny_whisper

from data_prep.asr import LOW_CONFIDENCE, Whisper, transcribe_stretches
from hhtune.speech.align import Interval


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return build_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny")


@pytest.fixture(scope="module")
def audio():
    return (np.random.default_rng(0).standard_normal(16000 * 6) * 0.1).astype(np.float32)


def test_language_id_is_restricted_to_the_seven(whisper_dir, audio):
    w = Whisper(whisper_dir)
    assert set(w.language_ids) == {"en", "zh", "ja", "ko", "de", "fr"}  # no <|yue|> in this vocabulary, no es
    start = torch.tensor([[w.model.generation_config.decoder_start_token_id]])
    logits = w.model(input_features=w._features(audio)["input_features"], decoder_input_ids=start).logits[0, -1]
    assert w.processor.tokenizer.convert_ids_to_tokens(int(logits.argmax())) == "<|es|>"  # unrestricted: Spanish
    found = w.detect_language(audio)
    assert (found.language, found.method) == ("de", "whisper") and 0.5 < found.confidence <= 1.0


def test_cues_are_timed_in_file_time_and_flagged(whisper_dir, audio):
    stretches = [Interval(0.5, 2.0, "speech"), Interval(3.0, 5.5, "speech")]
    out = transcribe_stretches(audio, stretches, "de", str(whisper_dir))
    assert out.transcript.source == "asr"
    assert [s.text for s in out.transcript.segments] == [" ".join(["guten"] * NEW_TOKENS)] * 2
    for seg, stretch in zip(out.transcript.segments, stretches):  # each cue inside the stretch it was heard in
        assert stretch.start <= seg.start < seg.end == stretch.end
    assert all(c < LOW_CONFIDENCE for c in out.confidence) and len(out.low_confidence()) == 2


def test_a_folder_that_is_not_whisper_is_named(tmp_path):
    with pytest.raises(ValueError, match="is not a Whisper folder"):
        Whisper(tmp_path)
