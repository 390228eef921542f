"""The `harness` command. argparse lives in this folder and nowhere else: flags.py (the flags subcommands
share), handlers.py (each subcommand turns its flags into a Config and paths and calls a function of
`harness.commands`, imported only when that subcommand runs, so that `harness --help` answers without
importing torch) and parser.py (the subcommands and their flags)."""

from __future__ import annotations

import signal
import sys

from harness import Interrupted, UserError
from harness.cli.flags import EXIT_USAGE
from harness.cli.parser import build_parser

__all__ = ["build_parser", "main"]

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        from harness.commands.terminal import progress_seconds
        progress_seconds()  # a bad $HARNESS_PROGRESS_SECONDS is one line before anything starts
        return args.func(args)
    except UserError as err:
        print(f"harness: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # a write the checks could not foresee: a full disk, a folder removed under us
        where = f"{err.filename}: " if err.filename else ""
        print(f"harness: error: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, Interrupted) as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        hint = getattr(stop, "hint", None) or "--resume"
        print(f"harness: stopped by {signal.Signals(signum).name}; finished steps are saved (continue with {hint})",
              file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
