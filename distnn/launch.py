"""``python -m distnn.launch``: see :mod:`distnn.cli.launch`."""

if __name__ == "__main__":
    from distnn.cli import run

    run("launch")
