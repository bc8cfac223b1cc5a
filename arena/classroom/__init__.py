"""The class: teams and rosters, git submissions and pushes by webhook."""
