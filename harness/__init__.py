"""GRPO vs PPO benchmark harness: the engine and the CLI."""

__version__ = "0.1.0"


class UserError(Exception):
    """A problem with what the user asked for: shown as one line, exit status 2."""
