"""Planning a round: plugin versions, the keys of what a round needs, the pure plan and its writer."""
