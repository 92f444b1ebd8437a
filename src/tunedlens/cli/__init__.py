"""The ``tunedlens`` command line: argument parsing only; the work is done by library functions."""

from tunedlens.cli.app import main

__all__ = ["main"]
