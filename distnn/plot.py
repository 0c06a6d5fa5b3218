"""``python -m distnn.plot``: see :mod:`distnn.cli.plot`."""

if __name__ == "__main__":
    from distnn.cli import run

    run("plot")
