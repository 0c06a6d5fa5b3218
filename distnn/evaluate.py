"""``python -m distnn.evaluate``: see :mod:`distnn.cli.evaluate`."""

if __name__ == "__main__":
    from distnn.cli import run

    run("evaluate")
