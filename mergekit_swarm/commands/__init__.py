"""What the user runs: `run` (a search), `apply` (a recipe of weights), `rescore` (score a written
folder), `compare` (the swarm against baselines), `multistage` (a search as a `mergekit-multi` stage).

May import every layer below it (`core` ... `output`); only the interfaces (`cli`, `mergekit_plugin`)
import it.
"""
