"""Files distnn writes and reads back: models, checkpoints, and safe output files."""
