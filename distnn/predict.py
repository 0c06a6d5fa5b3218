"""``python -m distnn.predict``: see :mod:`distnn.cli.predict`."""

import sys

from distnn.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
