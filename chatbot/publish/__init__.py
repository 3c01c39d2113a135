"""Publishing a meeting to where the team keeps it."""
