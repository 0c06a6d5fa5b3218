"""Data parallelism over MPI: the world, the trainer and its gradient reducers, threads."""
