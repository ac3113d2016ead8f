"""pefs/results."""
