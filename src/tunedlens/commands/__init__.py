"""One module per CLI command: each holds one function, ``run``, that the CLI calls.

A command's ``run`` takes the command's arguments as plain values, checks every one that needs
no model first, then opens the model and lenses (:mod:`tunedlens.commands.common`) and calls
library code. It returns what the command shows; the CLI (:mod:`tunedlens.cli`) only maps
arguments to it and prints.
"""
