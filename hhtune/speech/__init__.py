"""Speech tools shared by data_prep and sampling: languages, G2P, alignment, speech detection.

Submodules import their heavy dependencies (phonemizer, librosa, silero-vad, transformers) only when used.
"""
