"""Exceptions whose message is meant to be shown to a user as one line."""

from __future__ import annotations


class SelfloopError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class InputError(SelfloopError, ValueError):
    """An image, mask or argument that the core cannot work with."""


class CheckpointError(SelfloopError):
    """A checkpoint file that is missing, corrupt, foreign or incompatible."""


class Cancelled(SelfloopError):
    """Raised when a long-running job is cancelled by its caller."""
