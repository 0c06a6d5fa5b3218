"""``python -m distnn``: the same as ``python -m distnn.train``."""

from distnn.cli import run

run("train")
