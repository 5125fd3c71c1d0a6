"""The search loop: evaluation of particles (in process or on Ray workers), checkpoints and resume."""
