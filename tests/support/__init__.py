"""Support code the tests share: harnesses of ours, not part of the bot."""
