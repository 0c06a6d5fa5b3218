"""``python -m distnn.train``: see :mod:`distnn.cli.train`."""

if __name__ == "__main__":
    from distnn.cli import run

    run("train")
