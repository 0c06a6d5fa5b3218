"""The NumPy engine: the network of MATH.md, its σ and losses, the update schedules."""
