"""The command line: the arena's and the instructor's commands, a student's check and play, what they print."""
