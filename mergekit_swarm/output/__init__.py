"""What a finished run writes: the model folder, the card, the plot and the summary."""
