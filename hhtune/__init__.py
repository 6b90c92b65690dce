"""hhtune: LoRA fine-tuning for the HappyHorse single-stream audio+video transformer."""

__version__ = "0.1.0"
