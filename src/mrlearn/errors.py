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


class RunInterrupted(Exception):
    """A run stopped by a signal (SIGTERM, SIGINT) after writing what it needs to resume.

    ``signum``: the signal; ``exit_code``: ``128 + signum`` (143 for SIGTERM, 130 for SIGINT);
    ``checkpoint``: the resumable checkpoint or None; ``resume``: the command that continues the run (a command may
    replace it before printing). ``str()`` is one line.
    """

    def __init__(self, signum: int, where: str, checkpoint: str | Path | None, resume: str):
        super().__init__(signum, where, checkpoint, resume)
        self.signum, self.where, self.checkpoint, self.resume = int(signum), where, checkpoint, resume

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        import signal

        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        saved = f"resumable checkpoint {self.checkpoint}" if self.checkpoint else "no checkpoint was written yet"
        return f"interrupted by {name} {self.where}; {saved}; resume with: {self.resume}"


class NonFiniteError(MrlearnError):
    """Training produced NaN/Inf (loss or weights). ``checkpoints_noted``: the message already says which
    checkpoints remain; when False, :class:`mrlearn.engine.runfolder.RunFolder` adds it on the way out."""

    checkpoints_noted: bool = False
