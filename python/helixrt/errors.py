"""The exceptions helixrt raises.

Every one derives from `HelixError`, and also from the standard type a user would already catch
(`ValueError`, `KeyError`, `TimeoutError`, ...), so `except HelixError` catches everything from
helixrt and `except TimeoutError` keeps working in code written for the standard library.
The Rust core raises these same classes (it imports this module on its first error).
"""

from __future__ import annotations

__all__ = ["HelixError"]


class HelixError(Exception):
    """The root of every exception helixrt raises."""
