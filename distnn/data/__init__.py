"""Data sets: the embedded digits, synthetic data, and user files in every format we read."""

from distnn.data.dataset import Dataset
from distnn.data.load import VALID_SPECS, load_dataset

__all__ = ["VALID_SPECS", "Dataset", "load_dataset"]
