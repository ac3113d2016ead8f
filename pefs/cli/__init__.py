"""pefs/cli."""
