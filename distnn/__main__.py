import sys

from distnn.train import main

sys.exit(main())
