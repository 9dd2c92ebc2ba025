"""User-facing errors.

Every problem a user can cause (bad file, bad option, bad config) raises :class:`MrlearnError` with a
one-line message of the form ``"<where>: <what is wrong>; <what to do>"``. The CLI prints it as
``mrlearn: error: <message>`` and exits with status 2, never with a traceback.
"""

from __future__ import annotations

from pathlib import Path


class MrlearnError(ValueError):
    """A problem with the user's input, reported as one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def input_error(where: str | Path, what: str, todo: str | None = None) -> MrlearnError:
    """Build a one-line error: ``"<where>: <what>; <todo>"``."""
    msg = f"{where}: {what}"
    if todo:
        msg += f"; {todo}"
    return MrlearnError(msg)
