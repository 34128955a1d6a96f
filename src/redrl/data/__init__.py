"""Data: offline teacher traces, evaluation sets, and the embedded arithmetic task."""
