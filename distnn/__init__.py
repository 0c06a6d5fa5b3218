"""distnn: data-parallel training of feed-forward neural networks over MPI, in NumPy.

    import distnn
    net = distnn.Network([64, 32, 10], activations="sigmoid", seed=0)
    history = distnn.fit(net, "digits", epochs=10)       # alone, or under mpirun -n N
    report = distnn.evaluate(net, x_test, y_test)

The names below are imported on first use: ``import distnn`` alone loads nothing, so
``python -m distnn.train`` can set up its signal handling before NumPy and MPI load,
and a script that only predicts never starts MPI.
"""

from importlib import import_module

__version__ = "0.1.0"

_WHERE = {
    "Network": "distnn.engine.network",
    "GradientUpdateSchedule": "distnn.engine.update_schedule",
    "DistnnError": "distnn.errors",
    "StopTraining": "distnn.errors",
    "fit": "distnn.api",
    "History": "distnn.run.loop",
    "evaluate": "distnn.parallel.evaluation",
    "World": "distnn.parallel.world",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'distnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*_WHERE, "__version__"])


__all__ = [
    "DistnnError",
    "GradientUpdateSchedule",
    "History",
    "Network",
    "StopTraining",
    "World",
    "__version__",
    "evaluate",
    "fit",
]
