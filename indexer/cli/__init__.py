"""The ``clipindex`` command line: Click commands over the library API, their shared options, their output.

The top room: may import every other room. Only here (and in :mod:`clipindex.web`) do typed errors become
messages and exit codes.
"""

from clipindex.cli.commands import cli, main

__all__ = ["cli", "main"]
