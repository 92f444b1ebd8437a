"""``python -m tunedlens``."""

from tunedlens.cli import main

main()
