"""The run: one training run's options, setup, epoch loop, outputs and checkpoints.

What ``distnn.fit`` and ``python -m distnn.train`` both run. It sits above the layers
it uses (engine, data, io, parallel), none of which import it back.
"""
