"""The commands behind the CLI: each callable from Python with a Config and paths."""
