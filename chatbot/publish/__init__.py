"""Where a meeting's note goes beyond the room: a GitHub issue, a HackMD page, a git archive."""
