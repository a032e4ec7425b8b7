"""User-facing errors.

Every error a user can cause (a bad path, a bad flag, a broken checkpoint) is an :class:`MmlcError`
whose message names the input, the problem and the fix. The CLI prints the message and exits with
status 2, without a traceback; library callers can catch the base class.
"""

from __future__ import annotations


class MmlcError(Exception):
    """Base class of user errors: the message says what input, what is wrong, and how to fix it."""


class ConfigError(MmlcError, ValueError):
    """A config field or option has a bad value."""


class SourceError(MmlcError):
    """A frame source (video file, webcam, image folder, stream URL) cannot be opened or read."""


class CheckpointError(MmlcError):
    """A checkpoint folder or weights file is missing, incomplete, or does not fit the model."""


class DataError(MmlcError):
    """A dataset file or folder (episode JSON, video, annotations) is missing or malformed."""
