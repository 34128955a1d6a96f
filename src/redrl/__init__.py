"""redrl: post-train small language models for verifiable reasoning with Recall-Extend Dynamics.

The math lives in :mod:`redrl.objectives` (pure tensor functions) and :mod:`redrl.regulator`
(the entropy regulator's state).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("redrl")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
