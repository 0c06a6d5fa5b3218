"""The command lines: train, evaluate, predict, plot, and what they share."""
