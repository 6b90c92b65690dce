"""Judging an adapter as a brand team would (issue 20)."""
