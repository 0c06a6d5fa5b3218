"""``python -m distnn.evaluate``: see :mod:`distnn.cli.evaluate`.

Imported, ``distnn.evaluate`` must stay the function users call (``distnn.evaluate(net,
x, y)``): Python binds a package's submodule to the package's attribute of the same
name, so this module, once imported, puts the function in its own place.
"""

import sys

if __name__ == "__main__":
    from distnn.cli import run

    run("evaluate")
else:
    from distnn.parallel.evaluation import evaluate

    sys.modules[__name__] = evaluate  # what ``import distnn.evaluate`` binds to distnn.evaluate
