"""``python -m distnn.train``: see :mod:`distnn.cli.train`."""

import sys

from distnn.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
