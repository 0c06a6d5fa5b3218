"""distnn: data-parallel training of feed-forward neural networks over MPI, in NumPy."""

from distnn.engine.network import Network
from distnn.engine.schedules import GradientUpdateSchedule

__version__ = "0.1.0"

__all__ = ["GradientUpdateSchedule", "Network", "__version__"]
