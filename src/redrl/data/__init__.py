"""Data: offline teacher traces, evaluation sets, and the embedded arithmetic task."""

from redrl.data.benchmarks import BENCHMARKS, load_benchmark
from redrl.data.offline import load_offline, load_problems

__all__ = ["BENCHMARKS", "load_benchmark", "load_offline", "load_problems"]
