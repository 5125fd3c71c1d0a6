"""What a finished run writes: the model folder, `mergekit_config.yml`, the card, the plot, the summary,
and how its folder is published.

May import every layer below it (`core` ... `search`).
"""
