"""GRPO vs PPO benchmark harness: the engine and the CLI."""

from __future__ import annotations

__version__ = "0.1.0"


class UserError(Exception):
    """A problem with what the user asked for: shown as one line, exit status 2."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM asked this process to stop: exit status 128 + the signal's number.

    A BaseException, like KeyboardInterrupt, so that `except Exception` (which records a failed arm)
    lets it through to the code that records an interrupted one.
    """

    def __init__(self, signum: int, hint: str | None = None):
        import signal
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.hint = hint  # the command that continues what was stopped
        super().__init__(f"stopped by {self.name}")
