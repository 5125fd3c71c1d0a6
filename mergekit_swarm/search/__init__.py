"""The search loop: evaluation of particles, checkpoints and resume."""
