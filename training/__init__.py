"""Training scripts built on ``colorize`` (never on ``nodes``)."""
