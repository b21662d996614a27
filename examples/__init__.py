"""Recipes that run end to end (``python examples/NAME.py --help``); a package so that the
tests and benchmarks import their functions as ``examples.NAME``."""
