"""Particle swarm search over expert coefficients (pure numpy, no I/O).

The pure engine, above `core` (which it may import) and beside `utilities` and `hub`.
"""

from mergekit_swarm.pso.engine import initialize, observe, probes_follow, step, winner
from mergekit_swarm.pso.settings import Granularity, SwarmSettings
from mergekit_swarm.pso.state import SwarmState

__all__ = ["Granularity", "SwarmSettings", "SwarmState", "initialize", "observe", "probes_follow", "step", "winner"]
