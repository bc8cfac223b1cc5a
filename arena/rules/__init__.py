"""The game's rules: the plugin contract's hooks, tracks and data, norms and the budget ball's geometry, the
referee's checks, the secret evaluation."""
