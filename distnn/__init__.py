"""distnn: data-parallel training of feed-forward neural networks over MPI, in NumPy.

    import distnn
    net = distnn.Network([64, 32, 10], activations="sigmoid", seed=0)
    history = distnn.fit(net, "digits", epochs=10)       # alone, or under mpirun -n N
    report = distnn.evaluate(net, x_test, y_test)

``fit``, ``evaluate``, ``History`` and ``World`` are imported on first use: they start MPI, which
``import distnn`` alone (a model to predict with, say) does not need.
"""

from importlib import import_module

from distnn.engine.network import Network
from distnn.engine.schedules import GradientUpdateSchedule
from distnn.errors import DistnnError

__version__ = "0.1.0"

_STARTS_MPI = {
    "fit": "distnn.training",
    "History": "distnn.training",
    "evaluate": "distnn.parallel.evaluation",
    "World": "distnn.parallel.world",
}


def __getattr__(name: str):
    if name in _STARTS_MPI:
        return getattr(import_module(_STARTS_MPI[name]), name)
    raise AttributeError(f"module 'distnn' has no attribute {name!r}")


__all__ = [
    "DistnnError",
    "GradientUpdateSchedule",
    "History",
    "Network",
    "World",
    "__version__",
    "evaluate",
    "fit",
]
