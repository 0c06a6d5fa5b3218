"""``python -m distnn.predict``: see :mod:`distnn.cli.predict`."""

if __name__ == "__main__":
    from distnn.cli import run

    run("predict")
