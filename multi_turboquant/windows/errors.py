"""The error type for user-facing failures of the Windows build kit commands."""

from __future__ import annotations


class KitError(Exception):
    """A problem with the user's input or environment: reported as one message, without a traceback."""
