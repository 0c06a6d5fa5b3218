"""``python -m distnn.plot``: see :mod:`distnn.cli.plot`."""

import sys

from distnn.cli.plot import main

if __name__ == "__main__":
    sys.exit(main())
