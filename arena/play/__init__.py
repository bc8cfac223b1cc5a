"""Playing the game: training a defense, a match between an attack and a defense, and its judging."""
