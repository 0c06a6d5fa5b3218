import sys

from distnn.cli.train import main

sys.exit(main())
