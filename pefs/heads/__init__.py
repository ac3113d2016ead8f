"""pefs/heads."""
