"""What a round shows: standings, history, the game's equilibrium, curves, diagnostics, who may see what."""
