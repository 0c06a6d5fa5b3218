"""``python -m distnn.evaluate``: see :mod:`distnn.cli.evaluate`."""

import sys

from distnn.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
