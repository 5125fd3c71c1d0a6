"""The search loop: evaluation of particles (in process or on Ray workers), run state and resume.

May import every layer below it: `core`, `pso`, `utilities`, `hub`, `config`, `experts`, `weights`.
"""
