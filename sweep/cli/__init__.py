"""The command line, one module per command; `main` assembles them (sweep.cli.main)."""

from sweep.cli.main import COMMANDS, main

__all__ = ["COMMANDS", "main"]
