"""Training: state and steps, optimizers, checkpoints, run identity, the loop."""
