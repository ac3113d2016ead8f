"""pefs/config."""
